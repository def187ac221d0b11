"""One lock for the agent's deferred imports.

Handler modules are imported on first request and the engine's modules by the thread that
opens it, so two threads may import at the same time. Python copes with that only while
the modules involved form no import cycle; taking turns makes it safe whatever the graph.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

_LOCK = threading.RLock()


def import_module(name: str) -> ModuleType:
    with _LOCK:
        return importlib.import_module(name)
