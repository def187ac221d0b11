"""Which compressed blob holds a layer in which repository, so a push can skip or mount it.

Keyed by the layer's DiffID (what the store knows); each entry is a compressed digest
and size seen in ``registry/repository`` by a pull or a push. Kept in one JSON file,
rewritten atomically; a lost or corrupt file only costs a re-upload.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_PER_LAYER = 50


@dataclass(frozen=True)
class Known:
    digest: str
    size: int
    registry: str
    repository: str


class BlobCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, list[dict[str, object]]]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("%s is corrupt; starting it again", self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def lookup(self, diff_id: str, registry: str) -> list[Known]:
        with self._lock:
            entries = self._read().get(diff_id, [])
        found = []
        for entry in entries:
            try:
                known = Known(
                    str(entry["digest"]),
                    int(entry["size"]),  # type: ignore[call-overload]
                    str(entry["registry"]),
                    str(entry["repository"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if known.registry == registry:
                found.append(known)
        return found

    def remember(self, diff_id: str, known: Known) -> None:
        with self._lock:
            data = self._read()
            entries = [
                e
                for e in data.get(diff_id, [])
                if (e.get("registry"), e.get("repository")) != (known.registry, known.repository)
            ]
            entries.insert(0, known.__dict__)
            data[diff_id] = entries[:MAX_PER_LAYER]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".blobs-")
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump(data, handle, sort_keys=True)
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
