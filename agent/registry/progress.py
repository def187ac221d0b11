"""docker's JSON progress messages, written to the API stream from any thread.

A client that went away must not fail the pull or push: after the first failed write the
messages are dropped and the work goes on (its result still lands in the store).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)

INTERVAL = 0.1  # seconds between two byte counts of one layer


class Sink(Protocol):
    def write_json(self, value: object, flush: bool = True) -> None: ...


class Progress:
    def __init__(self, sink: Sink | None) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            if self._sink is None:
                return
            try:
                self._sink.write_json(message)
            except (OSError, ValueError) as exc:
                log.info("the client went away (%s); carrying on without progress", exc)
                self._sink = None

    def status(self, text: str, id: str = "") -> None:
        self.send({"status": text, "id": id} if id else {"status": text})

    def layer(self, id: str, text: str) -> None:
        self.send({"status": text, "progressDetail": {}, "id": id})

    def bytes(self, id: str, text: str, current: int, total: int, force: bool = False) -> None:
        """A byte count, at most every INTERVAL seconds per layer (and always at the end)."""
        now = time.monotonic()
        key = f"{id}/{text}"
        if not force and current < total and now - self._last.get(key, 0.0) < INTERVAL:
            return
        self._last[key] = now
        detail = {"current": current, "total": total} if total > 0 else {"current": current}
        self.send({"status": text, "progressDetail": detail, "id": id})

    def error(self, message: str) -> None:
        self.send({"errorDetail": {"message": message}, "error": message})
