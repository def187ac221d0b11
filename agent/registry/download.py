"""Blobs downloaded to disk, hashed as they arrive, resumed with a Range request.

A blob is written to ``<dir>/<hex>.partial`` and renamed to ``<dir>/<hex>`` only once its
size and sha256 match the manifest, so a file without the suffix is always verified. A
download cut short keeps its partial file, and the next attempt asks only for the rest; a
blob whose content does not match is deleted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from agent.registry.client import BLOCK, RegistryError, RepositoryClient
from agent.registry.manifest import Descriptor
from agent.registry.progress import Progress

WORKERS = 4

_locks: dict[str, threading.Lock] = {}
_users: dict[str, int] = {}  # blob file -> pulls that may still read it
_locks_guard = threading.Lock()


class Cancelled(Exception):
    """Another layer failed: this download stops early (its partial file stays)."""


def _lock_for(path: Path) -> threading.Lock:
    """Two pulls of the same blob take turns, the second finding it done."""
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def _hash_file(path: Path, hasher: hashlib._Hash) -> int:
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            hasher.update(chunk)
            size += len(chunk)
    return size


def fetch_blob(
    client: RepositoryClient,
    blob: Descriptor,
    directory: Path,
    progress: Progress,
    cancel: threading.Event | None = None,
) -> Path:
    """The verified blob's path under ``directory``."""
    hex_digest = blob.digest.removeprefix("sha256:")
    final = directory / hex_digest
    partial = directory / f"{hex_digest}.partial"
    with _lock_for(final):
        if final.exists() and final.stat().st_size == blob.size:
            progress.layer(blob.short, "Download complete")
            return final
        directory.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        have = _hash_file(partial, hasher) if partial.exists() else 0
        if have > blob.size:
            partial.unlink()
            hasher, have = hashlib.sha256(), 0
        if have < blob.size:
            have, hasher = _receive(client, blob, partial, have, hasher, progress, cancel)
        progress.layer(blob.short, "Verifying Checksum")
        if have != blob.size or "sha256:" + hasher.hexdigest() != blob.digest:
            partial.unlink(missing_ok=True)
            raise RegistryError(
                502,
                f"filesystem layer verification failed for digest {blob.digest}: the "
                "registry sent other content than the manifest names; nothing was stored",
            )
        os.rename(partial, final)
        progress.layer(blob.short, "Download complete")
        return final


def _receive(
    client: RepositoryClient,
    blob: Descriptor,
    partial: Path,
    have: int,
    hasher: hashlib._Hash,
    progress: Progress,
    cancel: threading.Event | None,
) -> tuple[int, hashlib._Hash]:
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = client.request(
        "GET", client.path(f"blobs/{blob.digest}"), headers, expect=(200, 206)
    )
    if response.status == 200 and have:  # the server ignored the range: start over
        hasher, have = hashlib.sha256(), 0
        partial.unlink(missing_ok=True)
    try:
        with open(partial, "ab") as out:
            buffer = bytearray(BLOCK)
            view = memoryview(buffer)
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                count = response.readinto(view)
                if not count:
                    break
                hasher.update(view[:count])
                out.write(view[:count])
                have += count
                if have > blob.size:
                    break  # more than the manifest says: fails verification
                progress.bytes(blob.short, "Downloading", have, blob.size)
    except (OSError, http.client.HTTPException) as exc:
        response.close()
        raise RegistryError(
            502,
            f"downloading {blob.digest} stopped after {have} of {blob.size} bytes ({exc}); "
            "pull again to resume",
        ) from None
    finally:
        if not response.isclosed() and have != blob.size:
            response.close()
    return have, hasher


class Downloads:
    """Layers fetched by a few threads; :meth:`wait` gives one layer's verified file."""

    def __init__(self, client: RepositoryClient, directory: Path, progress: Progress) -> None:
        self.client = client
        self.directory = directory
        self.progress = progress
        self.cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pull")
        self._futures: dict[str, Future[Path]] = {}
        self.fetched: set[Path] = set()

    def start(self, blob: Descriptor) -> None:
        if blob.digest not in self._futures:
            path = self.directory / blob.digest.removeprefix("sha256:")
            with _locks_guard:  # a concurrent pull of the same blob must not delete it
                _users[str(path)] = _users.get(str(path), 0) + 1
            self.fetched.add(path)
            self._futures[blob.digest] = self._pool.submit(
                fetch_blob, self.client, blob, self.directory, self.progress, self.cancel
            )

    def wait(self, blob: Descriptor) -> Path:
        self.start(blob)
        return self._futures[blob.digest].result()

    def release(self, delete: bool) -> None:
        """Done with the blobs; with ``delete``, remove those no other pull still reads."""
        with _locks_guard:
            for path in self.fetched:
                left = _users.get(str(path), 1) - 1
                if left > 0:
                    _users[str(path)] = left
                    continue
                _users.pop(str(path), None)
                if delete:
                    path.unlink(missing_ok=True)
            self.fetched.clear()

    def close(self) -> None:
        self.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.release(delete=False)  # after a success release(delete=True) came first
