"""The classic build cache: (parent image, step) -> the image that step made.

One small file per key under ``<engine root>/build-cache/``, holding the image id. The key
is the sha256 of the parent image id, the step's history text (the instruction after
substitution, with the build args a RUN sees and a content hash for COPY/ADD) and any
extra input (the source image of COPY --from). An entry whose image was deleted since is
a miss, and goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from agent.errors import AgentError
from agent.images.store import Image, ImageStore


class BuildCache:
    def __init__(self, directory: Path, store: ImageStore) -> None:
        self.directory = directory
        self.store = store

    @staticmethod
    def key(parent_id: str, created_by: str, extra: str) -> str:
        text = json.dumps([parent_id, created_by, extra], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def lookup(self, parent_id: str, created_by: str, extra: str) -> Image | None:
        path = self.directory / self.key(parent_id, created_by, extra)
        try:
            image_id = path.read_text().strip()
        except OSError:
            return None
        try:
            return self.store.get(image_id)
        except (AgentError, OSError, ValueError):
            path.unlink(missing_ok=True)  # the image was removed since
            return None

    def record(self, parent_id: str, created_by: str, extra: str, image_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self.key(parent_id, created_by, extra)
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".new-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(image_id + "\n")
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
