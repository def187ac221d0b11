"""Logging for the agent process: one file (or stderr) for every module's logger.

Importing :mod:`logging` (with re, traceback, string, weakref and warnings, which it
imports) costs ~0.3 s of the agent's start in the VM under tcg, on the way to its first
answer. So :func:`configure_logging` only opens the log and records the level, and the
modules on that way take their loggers from :func:`get_logger`: a stand-in that imports
logging, and applies the configuration, the first time it logs. The engine's start-up
thread calls :func:`apply` before anything else, so records from modules that use
:mod:`logging` directly are never dropped.
"""

from __future__ import annotations

import os
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(threadName)s]: %(message)s"

_lock = threading.Lock()
_stream: TextIO | None = None  # where records go, once configured
_level = "INFO"
_applied = False


def configure_logging(log_file: str | None, level: str = "INFO") -> None:
    """Send all agent records to ``log_file`` (appended; parent created) or to stderr.

    The file is opened now, so a path that cannot be written fails here (OSError);
    logging itself is set up when first used, or by :func:`apply`.
    """
    global _stream, _level, _applied
    if log_file:
        parent = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(parent, exist_ok=True)
        stream: TextIO = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (the process's log)
    else:
        stream = sys.stderr
    with _lock:
        _stream, _level, _applied = stream, level.upper(), False
    if "logging" in sys.modules:
        apply()  # already in use (tests, a second configuration): take effect now


def apply() -> None:
    """Import logging and install the configured handler (once; a no-op unconfigured)."""
    global _applied
    if _applied:
        return
    import logging

    with _lock:
        if _applied or _stream is None:
            return
        handler = logging.StreamHandler(_stream)
        handler.setFormatter(logging.Formatter(FORMAT))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(_level)
        _applied = True


def debug_enabled() -> bool:
    """Whether DEBUG records are wanted, without importing logging to ask."""
    return _level == "DEBUG" and _stream is not None


class _DeferredLogger:
    """``logging.getLogger(name)``, looked up (and logging set up) on first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        import logging

        apply()
        value = getattr(logging.getLogger(self._name), attribute)
        if callable(value):
            setattr(self, attribute, value)  # later calls go straight to the bound method
        return value


def get_logger(name: str) -> logging.Logger:
    """A logger for ``name`` that costs nothing until it is first used."""
    return _DeferredLogger(name)  # type: ignore[return-value]
