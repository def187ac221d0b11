"""The daemon's handle on its engine, light to import: opening the engine (and importing
the runtime, the image store and the rest, which takes a while in a VM under tcg) happens
in a background thread once the API socket listens; handlers call :func:`current`, which
waits for it."""

from __future__ import annotations

import os
import threading

from agent.errors import AgentError
from agent.logsetup import get_logger

TYPE_CHECKING = False  # typing costs a tenth of a second at the VM's boot
if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.engine import Engine

log = get_logger(__name__)

OPEN_TIMEOUT = 300.0


class _Opener:
    """Opens the engine in a thread; :meth:`get` waits for it (or its failure)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._engine: Engine | None = None
        self._error: str = ""
        self._started = False

    def start(self, first: Callable[[], None] | None = None, **kwargs: object) -> None:
        """Open the engine in a thread, after ``first`` (the agent's other start-up work).
        From now on requests that need the engine wait for it."""
        self._started = True

        def work() -> None:
            try:
                # (logging is set up by lazy_import before the engine's modules, which use
                # it directly, are imported)
                if first is not None:
                    first()
                from agent import lazy_import

                engine = lazy_import.import_module("agent.engine")
                self._engine = engine.open_engine(**kwargs)
                log.info("engine ready: %d containers", len(self._engine.containers.all()))
            except Exception as error:
                log.exception("the engine could not start")
                self._error = str(error)
            finally:
                self._ready.set()
                mark_opened(str(kwargs.get("run_root") or ""))

        threading.Thread(target=work, name="engine-open", daemon=True).start()

    def get(self) -> Engine:
        if not self._started:
            raise AgentError(
                503, "this agent runs no container engine (it was started without --root)"
            )
        if not self._ready.wait(OPEN_TIMEOUT):
            raise AgentError(503, "the engine is still starting; try again")
        if self._engine is None:
            raise AgentError(500, f"the engine failed to start: {self._error}")
        return self._engine

    def close(self) -> None:
        if self._ready.is_set() and self._engine is not None:
            self._engine.containers.close()


_opener = _Opener()

OPENED_MARKER = "engine-opened"


def mark_opened(run_root: str) -> None:
    """`<run root>/engine-opened`: in the VM the boot loads its remaining kernel modules
    only then, so their insmods do not slow the engine's first answers."""
    if not run_root:
        return
    try:
        with open(os.path.join(run_root, OPENED_MARKER), "w"):
            pass
    except OSError as error:
        log.warning("cannot write %s in %s: %s", OPENED_MARKER, run_root, error)


def start_in_background(first: Callable[[], None] | None = None, **kwargs: object) -> None:
    _opener.start(first, **kwargs)


def current() -> Engine:
    return _opener.get()


def close() -> None:
    """Daemon shutdown: finish the engine's background chores (its containers run on)."""
    _opener.close()
