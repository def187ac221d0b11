"""Logging for the agent process: one file (or stderr) for every module's logger.

Importing :mod:`logging` (with re, traceback, string, weakref and warnings, which it
imports) costs ~0.3 s of the agent's start in the VM under tcg, on the way to its first
answers. So :func:`configure_logging` only opens the log and records the level, and the
modules on that way take their loggers from :func:`get_logger`: a stand-in that holds
plain records (debug, info, warning, error, without extra arguments) until logging is
set up, and sets it up for anything else. The engine's start-up thread calls
:func:`apply` before anything else: it imports logging there, installs the handler and
writes the held records with their own time and thread. So a request's access log line
never waits for that import, and records from modules that use :mod:`logging` directly
are never dropped.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(threadName)s]: %(message)s"

# reentrant: a signal handler that logs may interrupt its own thread holding it
_lock = threading.RLock()
_stream: TextIO | None = None  # where records go, once configured
_level = "INFO"
_applied = False
_applying = False  # apply() is writing the held records (a signal handler may log then)
_flush_at_exit = False
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# (logger name, level, message, time, thread name) held until :func:`apply`
_held: list[tuple[str, int, str, float, str]] = []
MAX_HELD = 1000  # beyond this, logging is set up on the spot


def configure_logging(log_file: str | None, level: str = "INFO") -> None:
    """Send all agent records to ``log_file`` (appended; parent created) or to stderr.

    The file is opened now, so a path that cannot be written fails here (OSError);
    logging itself is set up by :func:`apply`, or by a record that cannot be held.
    """
    global _stream, _level, _applied, _flush_at_exit
    if log_file:
        parent = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(parent, exist_ok=True)
        stream: TextIO = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (the process's log)
    else:
        stream = sys.stderr
    with _lock:
        _stream, _level, _applied = stream, level.upper(), False
        if not _flush_at_exit:  # records still held when the process ends are written then
            atexit.register(flush)
            _flush_at_exit = True
    if "logging" in sys.modules:
        apply()  # already in use (tests, a second configuration): take effect now


def apply() -> None:
    """Import logging, install the configured handler and write the held records (once;
    a no-op unconfigured)."""
    global _applied, _applying
    if _applied:
        return
    import logging

    with _lock:
        if _applied or _applying or _stream is None:
            return
        _applying = True
        try:
            handler = logging.StreamHandler(_stream)
            handler.setFormatter(logging.Formatter(FORMAT))
            root = logging.getLogger()
            root.handlers[:] = [handler]
            root.setLevel(_level)
            # Oldest first, and all of them before any new record: until _applied is set,
            # other threads' records wait for this lock (in _hold), and one this thread
            # logs meanwhile (a signal handler) is held and written here too.
            while _held:
                name, level, message, created, thread_name = _held.pop(0)
                logger = logging.getLogger(name)
                if logger.isEnabledFor(level):
                    record = logger.makeRecord(name, level, "", 0, message, (), None)
                    record.created, record.msecs = created, int(created % 1 * 1000)
                    record.threadName = thread_name
                    logger.handle(record)
            _applied = True
        finally:
            _applying = False


def flush() -> None:
    """Write the held records now, if there are any."""
    if _held:
        apply()


def debug_enabled() -> bool:
    """Whether DEBUG records are wanted, without importing logging to ask."""
    return _level == "DEBUG" and _stream is not None


class _DeferredLogger:
    """``logging.getLogger(name)``, looked up (and logging set up) on first use; until
    then plain records are held (see the module's docstring)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        level = LEVELS.get(attribute)
        if level is not None and not _applied and _stream is not None:
            # not cached: once logging is set up, the logger's own method is wanted
            return lambda msg, *args, **kwargs: _hold(self._name, level, msg, args, kwargs)
        import logging

        apply()
        value = getattr(logging.getLogger(self._name), attribute)
        if callable(value):
            setattr(self, attribute, value)  # later calls go straight to the bound method
        return value


def _hold(name: str, level: int, msg: object, args: tuple[object, ...], kwargs: dict) -> None:
    if not kwargs:  # exc_info, stack_info, extra: for logging itself
        if level < LEVELS.get(_level.lower(), 20):
            return
        values: object = args
        if len(args) == 1 and isinstance(args[0], dict) and args[0]:
            values = args[0]  # "%(key)s" formats, as logging takes a single mapping
        try:
            message = str(msg) % values if args else str(msg)
        except Exception:  # noqa: BLE001 (a bad format or __str__ must not fail the caller)
            message = f"{msg!r} {args!r}"  # kept, not dropped, with what would not format
        held = (name, level, message, time.time(), threading.current_thread().name)
        with _lock:
            if not _applied and _stream is not None and len(_held) < MAX_HELD:
                _held.append(held)
                return
    import logging

    apply()
    logging.getLogger(name).log(level, msg, *args, **kwargs)


def get_logger(name: str) -> logging.Logger:
    """A logger for ``name`` that costs nothing until it is first used."""
    return _DeferredLogger(name)  # type: ignore[return-value]
