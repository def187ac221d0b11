"""Logging set-up for the agent process: one file (or stderr) for every module's logger."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(threadName)s]: %(message)s"


def configure_logging(log_file: str | None, level: str = "INFO") -> None:
    """Send all agent records to ``log_file`` (appended; parent created) or to stderr."""
    handler: logging.Handler
    if log_file:
        parent = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(parent, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
