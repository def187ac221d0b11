"""Blobs downloaded to disk, hashed as they arrive, resumed with a Range request.

A blob is written to ``<dir>/<hex>.partial`` and renamed to ``<dir>/<hex>`` only once its
size and sha256 match the manifest, so a file without the suffix is always verified. A
download cut short keeps its partial file, and the next attempt asks only for the rest; a
blob whose content does not match is deleted.

A layer can be read while it arrives (:meth:`Downloads.open`): the reader follows the
partial file of a fresh download and sees its end only once the digest has matched, or
the download's error instead, so what it read is never taken for verified before that.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

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


class Arrival:
    """How far a blob's download has got, for a reader following its partial file."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.partial: Path | None = None  # set once a fresh download has created it
        self.written = 0
        self.done = False  # the blob is verified (or the download failed: error)
        self.error: BaseException | None = None

    def started(self, partial: Path) -> None:
        with self._changed:
            self.partial = partial
            self._changed.notify_all()

    def wrote(self, total: int) -> None:
        with self._changed:
            self.written = total
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self.done, self.error = True, error
            self._changed.notify_all()

    def wait(self, ready: Callable[[], bool]) -> None:
        with self._changed:
            self._changed.wait_for(lambda: ready() or self.done)


def fetch_blob(
    client: RepositoryClient,
    blob: Descriptor,
    directory: Path,
    progress: Progress,
    cancel: threading.Event | None = None,
    arrival: Arrival | None = None,
) -> Path:
    """The verified blob's path under ``directory``. With ``arrival``, a download that
    starts from nothing reports its progress there (a resumed one does not: its partial
    file holds bytes from before, which only the final digest vouches for)."""
    try:
        path = _fetch(client, blob, directory, progress, cancel, arrival)
    except BaseException as exc:
        if arrival is not None:
            arrival.finish(exc)
        raise
    if arrival is not None:
        arrival.finish()
    return path


def _fetch(
    client: RepositoryClient,
    blob: Descriptor,
    directory: Path,
    progress: Progress,
    cancel: threading.Event | None,
    arrival: Arrival | None,
) -> Path:
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
            follow = arrival if have == 0 else None
            have, hasher = _receive(client, blob, partial, have, hasher, progress, cancel, follow)
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
    arrival: Arrival | None = None,
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
            if arrival is not None:
                arrival.started(partial)
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
                if arrival is not None:
                    out.flush()  # what a follower is told is there, it can read
                    arrival.wrote(have)
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
        self._arrivals: dict[str, Arrival] = {}
        self.fetched: set[Path] = set()

    def start(self, blob: Descriptor) -> None:
        if blob.digest not in self._futures:
            path = self.directory / blob.digest.removeprefix("sha256:")
            with _locks_guard:  # a concurrent pull of the same blob must not delete it
                _users[str(path)] = _users.get(str(path), 0) + 1
            self.fetched.add(path)
            arrival = self._arrivals[blob.digest] = Arrival()
            self._futures[blob.digest] = self._pool.submit(
                fetch_blob, self.client, blob, self.directory, self.progress, self.cancel, arrival
            )

    def wait(self, blob: Descriptor) -> Path:
        self.start(blob)
        return self._futures[blob.digest].result()

    def raise_first_failure(self) -> None:
        """Once every download has ended, raise the first one's error, if any failed."""
        for future in self._futures.values():
            error = future.exception()
            if error is not None and not isinstance(error, Cancelled):
                raise error

    def open(self, blob: Descriptor) -> Following:
        """The blob's bytes as they arrive; the end only once they are verified."""
        self.start(blob)
        return Following(self._arrivals[blob.digest], lambda: self.wait(blob))

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


class Following:
    """Reads a blob while its download writes it: the partial file of a fresh download,
    up to what has been written; else (a resumed download, or one another pull made) the
    verified file once it is there. Its end comes only after the digest matched; if the
    download fails, reading raises that download's error."""

    def __init__(self, arrival: Arrival, verified: Callable[[], Path]) -> None:
        self._arrival = arrival
        self._verified = verified
        self._file: BinaryIO | None = None
        self._position = 0
        self._following = False

    @property
    def done(self) -> bool:
        """The download has ended (verified, or failed)."""
        return self._arrival.done

    @property
    def verified(self) -> bool:
        return self._arrival.done and self._arrival.error is None

    def read(self, size: int = -1) -> bytes:
        arrival = self._arrival
        if self._file is None:
            arrival.wait(lambda: arrival.partial is not None)
            if arrival.partial is not None and not arrival.done:
                self._following = True
                self._file = open(arrival.partial, "rb")  # noqa: SIM115 - closed in close()
            else:
                self._file = open(self._verified(), "rb")  # noqa: SIM115 - raises its error
        if not self._following:
            return self._file.read(size)
        want = size if size > 0 else BLOCK
        arrival.wait(lambda: arrival.written > self._position)
        if arrival.written > self._position:
            data = self._file.read(min(want, arrival.written - self._position))
            self._position += len(data)
            return data
        self._verified()  # done: raises the download's error, if it failed
        return self._file.read(want)  # the verified file has no more (or the rest, if any)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
