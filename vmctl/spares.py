"""Upstreams opened ahead of need, so a client of engine.sock skips the open's round trip.

Each connection to ``engine.sock`` is relayed over its own SSH channel, and opening one is a
round trip through the guest's sshd (~50 ms under tcg); the docker CLI opens one to three
per command. The host agent keeps a few channels to the engine socket open and idle, hands
one to each new client and opens a replacement in the background.

The engine never speaks first and never closes an idle connection, so a spare that has
seen its end, or has data waiting, belongs to an engine that has gone (restarted, or its
SSH connection dropped): it is closed and the next one is tried, then a fresh open.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between failed background opens, doubling


class SpareUpstreams(Generic[T]):
    """Keeps ``count`` upstreams from ``open_upstream`` ready; :meth:`get` takes one.

    ``usable(upstream)`` says whether an idle spare can still carry a request; ``close``
    releases one. Both must be cheap and must not block. ``open_spare``, if given, opens
    the spares (e.g. without the reconnecting that a client's own open may do).
    """

    def __init__(
        self,
        open_upstream: Callable[[], T],
        usable: Callable[[T], bool],
        close: Callable[[T], None],
        count: int = 3,
        open_spare: Callable[[], T] | None = None,
    ) -> None:
        self._open = open_upstream
        self._open_spare = open_spare or open_upstream
        self._usable = usable
        self._close = close
        self._count = count
        self._spares: list[T] = []
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self._opening = 0  # opens in flight
        self._closed = False
        # one filler per spare: a burst of clients (docker run opens several connections,
        # a script runs commands back to back) is refilled in one round trip, not several
        self._threads = [
            threading.Thread(target=self._fill, name=f"spare-upstream-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def offer(self, upstream: T) -> None:
        """Add an upstream opened elsewhere (and idle) as a spare; released if not needed."""
        with self._lock:
            if not self._closed and len(self._spares) + self._opening < self._count:
                self._spares.append(upstream)
                return
        self._release(upstream)

    def get(self) -> T:
        """A ready spare if one is still usable, else a fresh upstream (its errors raise)."""
        stale: list[T] = []
        spare: T | None = None
        with self._lock:
            while self._spares:
                candidate = self._spares.pop(0)
                if self._usable(candidate):
                    spare = candidate
                    break
                stale.append(candidate)
            self._wanted.notify_all()
        for upstream in stale:
            self._release(upstream)
        if stale:
            log.info("dropped %d stale spare connection(s) to the engine", len(stale))
        return spare if spare is not None else self._open()

    def close(self, timeout: float = 5.0) -> None:
        """Stop filling and close every spare."""
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, []
            self._wanted.notify_all()
        for upstream in spares:
            self._release(upstream)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def ready(self) -> int:
        with self._lock:
            return len(self._spares)

    def _fill(self) -> None:
        delay = RETRY_FIRST
        while True:
            with self._lock:
                while not self._closed and len(self._spares) + self._opening >= self._count:
                    self._wanted.wait()
                if self._closed:
                    return
                self._opening += 1
            try:
                upstream = self._open_spare()
            except Exception as exc:  # the engine restarting, SSH reconnecting: try later
                log.debug("could not open a spare connection: %s", exc)
                with self._lock:
                    self._opening -= 1
                    if not self._closed:
                        # only close() wakes this wait early (Condition.wait_for on closed)
                        self._wanted.wait_for(lambda: self._closed, delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            with self._lock:
                self._opening -= 1
                if not self._closed:
                    self._spares.append(upstream)
                    continue
            self._release(upstream)
            return

    def _release(self, upstream: T) -> None:
        with contextlib.suppress(Exception):
            self._close(upstream)
