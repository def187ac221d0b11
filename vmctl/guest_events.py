"""The host agent's subscription to the guest engine's events (``GET /events``).

One stream stays open to the engine through the same forwarding the host agent serves
``engine.sock`` with (an SSH channel to the guest's socket). When it breaks (the agent
restarted, SSH dropped), it reconnects with a doubling back-off, asking for the events it
missed from the engine's in-memory backlog (``since`` = the last one seen; a restarted
agent's backlog starts empty). Container starts and exits go to the host agent's log, one
line each, and every event goes to the callables registered on :class:`EventHooks` (the
published-ports forwarder registers there).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

BACKOFF_START = 0.5  # seconds before the first reconnection attempt
BACKOFF_MAX = 30.0
MAX_HEAD = 64 * 1024
MAX_LINE = 1024 * 1024  # one event; an engine sending more is broken
SEEN = 2048  # events remembered for de-duplication (the engine replays at most 1024)


class Stream(Protocol):
    """The part of a socket or a paramiko Channel the subscriber uses."""

    def sendall(self, data: bytes, /) -> Any: ...
    def recv(self, size: int, /) -> bytes: ...
    def close(self) -> Any: ...


Event = dict[str, Any]
EventHook = Callable[[Event], None]
ConnectHook = Callable[[], None]


class EventHooks:
    """Callables told about every event (and about each (re)connection, so that a consumer
    can resynchronise what it may have missed). A failing hook is logged, never fatal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event_hooks: list[EventHook] = []
        self._connect_hooks: list[ConnectHook] = []

    def register(self, hook: EventHook) -> Callable[[], None]:
        """Call ``hook(event)`` for each event; returns a function that unregisters it."""
        with self._lock:
            self._event_hooks.append(hook)
        return lambda: self._remove(self._event_hooks, hook)

    def on_connect(self, hook: ConnectHook) -> Callable[[], None]:
        """Call ``hook()`` each time the stream is (re)established."""
        with self._lock:
            self._connect_hooks.append(hook)
        return lambda: self._remove(self._connect_hooks, hook)

    def _remove(self, hooks: list[Any], hook: Any) -> None:
        with self._lock, contextlib.suppress(ValueError):
            hooks.remove(hook)

    def dispatch(self, event: Event) -> None:
        with self._lock:
            hooks = list(self._event_hooks)
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                log.exception(
                    "an event hook failed on %s %s", event.get("Type"), event.get("Action")
                )

    def connected(self) -> None:
        with self._lock:
            hooks = list(self._connect_hooks)
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("an event connect hook failed")


class StreamError(Exception):
    """The event stream could not be opened or broke."""


class _Reader:
    """An HTTP/1.1 response read from a stream: the head, then the (chunked) body's lines."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buffer = b""

    def _fill(self) -> None:
        data = self.stream.recv(65536)
        if not data:
            raise StreamError("the engine closed the event stream")
        self.buffer += data

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise StreamError("oversized response head")
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise StreamError(f"malformed status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise StreamError("malformed chunked body")
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def chunks(self, chunked: bool) -> Any:
        """The body's pieces as they arrive."""
        if not chunked:
            if self.buffer:
                yield self.buffer
                self.buffer = b""
            while True:
                data = self.stream.recv(65536)
                if not data:
                    return
                yield data
        while True:
            try:
                size = int(self._line().split(b";")[0].strip() or b"0", 16)
            except ValueError:
                raise StreamError("malformed chunk size") from None
            if size == 0:
                return
            while len(self.buffer) < size + 2:
                self._fill()
            piece, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
            yield piece


def _since(time_nano: int) -> str:
    return f"{time_nano // 1_000_000_000}.{time_nano % 1_000_000_000:09d}"


def describe(event: Event) -> str | None:
    """The host agent's log line for a container start or exit; None for other events."""
    if event.get("Type") != "container" or event.get("Action") not in ("start", "die"):
        return None
    actor = _mapping(event.get("Actor"))
    attributes = _mapping(actor.get("Attributes"))
    who = f"container {attributes.get('name', '?')} ({str(actor.get('ID', ''))[:12]})"
    if event["Action"] == "start":
        return f"{who} started from {attributes.get('image', '?')}"
    return f"{who} exited with code {attributes.get('exitCode', '?')}"


class EngineStream:
    """Keeps one streaming ``GET`` open on the engine over streams from ``open_stream``,
    reconnecting with back-off, and hands each line of its body to :meth:`handle_line`.
    Subclasses say what to ask for (:meth:`request_path`) and what a line means."""

    what = "engine stream"  # for the log and the thread's name

    def __init__(
        self,
        open_stream: Callable[[], Stream],
        backoff_start: float = BACKOFF_START,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.open_stream = open_stream
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.retry_delays: list[float] = []  # the back-off of each failed attempt (tests read it)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: Stream | None = None
        self._thread: threading.Thread | None = None

    def request_path(self) -> str:
        raise NotImplementedError

    def on_accepted(self) -> None:
        """The engine answered 200: the stream is established."""

    def handle_line(self, line: bytes) -> None:
        raise NotImplementedError

    def start(self) -> None:
        name = self.what.replace(" ", "-")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            stream, self._current = self._current, None
        if stream is not None:
            _close(stream)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        delay = self.backoff_start
        failing = False
        while not self._stop.is_set():
            try:
                established = self._session()
            except Exception as error:  # an SSH failure, a refused socket, a broken stream
                established = False
                reason = str(error) or type(error).__name__
            else:
                reason = f"the engine ended the {self.what}"
            if self._stop.is_set():
                return
            if established:
                delay = self.backoff_start
                failing = False
            if not failing:
                log.warning("%s lost (%s); reconnecting", self.what, reason)
                failing = True
            else:
                log.debug("%s: %s; retrying in %.1f s", self.what, reason, delay)
            self.retry_delays.append(delay)
            del self.retry_delays[:-100]
            if self._stop.wait(delay):
                return
            delay = min(self.backoff_max, delay * 2)

    def _session(self) -> bool:
        """One connection: True when the engine had accepted the request before the
        stream ended; an exception when it never did."""
        stream = self.open_stream()
        with self._lock:
            if self._stop.is_set():
                _close(stream)
                return False
            self._current = stream
        accepted = False
        path = self.request_path()
        try:
            stream.sendall(
                f"GET {path} HTTP/1.1\r\nHost: engine\r\nUser-Agent: vmctl-hostagent\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            reader = _Reader(stream)
            status, headers = reader.head()
            if status != 200:
                raise StreamError(f"the engine answered {path} with {status}")
            accepted = True
            self.on_accepted()
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            pending = b""
            for piece in reader.chunks(chunked):
                pending += piece
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.handle_line(line)
                if len(pending) > MAX_LINE:
                    raise StreamError("a message larger than 1 MiB")
            return True
        except (StreamError, OSError):
            if accepted:
                return True
            raise
        finally:
            with self._lock:
                if self._current is stream:
                    self._current = None
            _close(stream)


class EventSubscriber(EngineStream):
    """Keeps ``GET /events`` open and hands the events on to ``hooks``."""

    what = "engine event stream"

    def __init__(
        self,
        open_stream: Callable[[], Stream],
        hooks: EventHooks | None = None,
        backoff_start: float = BACKOFF_START,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        super().__init__(open_stream, backoff_start, backoff_max)
        self.hooks = hooks or EventHooks()
        self.last_time_nano = 0  # the latest event handed on (asked for again after a break)
        # events already handed on, to skip them when a reconnection replays them; kept by
        # identity, not by time, so a clock that steps back loses nothing
        self._seen: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=SEEN)
        self._seen_set: set[tuple[Any, ...]] = set()

    def request_path(self) -> str:
        query = f"?since={_since(self.last_time_nano)}" if self.last_time_nano else ""
        return f"/events{query}"

    def on_accepted(self) -> None:
        log.info("subscribed to the engine's events")
        self.hooks.connected()

    def handle_line(self, line: bytes) -> None:
        self._handle(line)

    def _handle(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("ignoring an unreadable event: %r", line[:200])
            return
        if not isinstance(event, dict):
            return
        stamp = event.get("timeNano")
        actor = _mapping(event.get("Actor"))
        key = tuple(
            str(v) for v in (stamp, event.get("Type"), event.get("Action"), actor.get("ID"))
        )
        if key in self._seen_set:
            return  # replayed after a reconnection: already handed on
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)
        if isinstance(stamp, int):
            self.last_time_nano = max(self.last_time_nano, stamp)
        text = describe(event)
        if text:
            log.info("%s", text)
        self.hooks.dispatch(event)


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _close(stream: Stream) -> None:
    shutdown = getattr(stream, "shutdown", None)
    if callable(shutdown):  # wakes a thread blocked in recv() on a socket
        with contextlib.suppress(OSError, TypeError):
            shutdown(2)
    with contextlib.suppress(Exception):
        stream.close()
