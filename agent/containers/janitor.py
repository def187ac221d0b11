"""Work a request need not wait for, done by one background thread in submission order.

`docker run --rm` pays for every millisecond the engine spends before it answers. Two
chores can happen just after: making a new container's record durable (the record is
already in place, renamed atomically; only the wait for the disk moves off the request),
and deleting a removed container's directory (renamed out of the way first, so the name
is free at once). A crash in between loses at most that fsync's few milliseconds of
durability, or leaves a `.trash-*` directory that the next start deletes.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

TRASH_PREFIX = ".trash-"


class Janitor:
    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, chore: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)
                self._thread.start()
        self._queue.put(chore)

    def _run(self) -> None:
        while True:
            chore = self._queue.get()
            try:
                if chore is not None:
                    chore()
            except Exception:  # a chore's failure must not stop the ones behind it
                log.exception("background chore failed")
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until everything submitted so far is done (tests, shutdown)."""
        self._queue.join()

    def sync_file(self, path: str) -> None:
        """fsync ``path`` and its directory, soon."""

        def chore() -> None:
            for target, flags in ((path, os.O_RDONLY), (os.path.dirname(path), os.O_DIRECTORY)):
                try:
                    fd = os.open(target, flags | os.O_CLOEXEC)
                except FileNotFoundError:  # removed meanwhile: nothing to keep
                    return
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        self.submit(chore)

    def delete_tree(self, directory: str) -> None:
        """Rename ``directory`` to a trash name beside it now; delete it soon."""
        trash = os.path.join(os.path.dirname(directory), TRASH_PREFIX + os.path.basename(directory))
        try:
            os.rename(directory, trash)
        except FileNotFoundError:
            return
        except OSError:  # e.g. a stale trash of the same name: delete in place instead
            trash = directory
        self.submit(lambda: shutil.rmtree(trash, ignore_errors=True))
