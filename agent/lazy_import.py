"""One lock for the agent's deferred imports.

Handler modules are imported on first request and the engine's modules by the thread that
opens it, so two threads may import at the same time. Python copes with that only while
the modules involved form no import cycle; taking turns makes it safe whatever the graph.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

from agent.logsetup import apply as apply_logging

_LOCK = threading.RLock()


def import_module(name: str) -> ModuleType:
    module = sys.modules.get(name)
    if module is not None and not getattr(module.__spec__, "_initializing", False):
        return module  # done already: no waiting behind another thread's imports
    # These modules may use logging directly: it is set up before they are imported, so
    # none of their records is lost (agent/logsetup.py holds only its own loggers').
    apply_logging()
    with _LOCK:
        __import__(name)  # not importlib.import_module: importing importlib imports warnings
        return sys.modules[name]
