"""The agent process: listen, announce readiness, serve until SIGTERM/SIGINT, clean up."""

from __future__ import annotations

import os
import signal
import threading

from agent import __version__
from agent.api.routes import build_router
from agent.api.server import Server
from agent.api.unix_listener import open_unix_listener, remove_socket_file
from agent.api.versions import API_VERSION
from agent.logsetup import apply as apply_logging
from agent.logsetup import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

log = get_logger(__name__)

DEFAULT_SOCKET = "/run/vmctl/engine.sock"


LISTENING = "vmctl-agent: listening on"


def readiness_line(socket_path: str) -> str:
    """The line the host watches for on the console to know the engine is up."""
    return f"VMCTL-READY agent={__version__} api={API_VERSION} socket={socket_path}\n"


def listening_line(socket_path: str) -> str:
    """The line that says the socket takes connections (answered once the boot is over)."""
    return f"{LISTENING} {socket_path}\n"


def write_line(path: str, line: str, purpose: str) -> None:
    """Append ``line`` to ``path`` (the console in the VM); failures only logged."""
    try:
        # O_NOCTTY: opening a terminal must not make it our controlling terminal
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as error:
        log.error("could not %s on %s: %s", purpose, path, error)


def import_first_handler() -> None:
    """Import /_ping's handler module (the host's first request) now.

    Handler modules are otherwise imported on first request, under the lock the engine's
    opener holds for its whole import (1-2 s in the VM at boot): a first /_ping that had
    to import its module waited behind it, up to 1.3 s at boot.
    """
    import agent.api.system  # noqa: F401


def wait_for(path: str, poll: float = 0.02) -> None:
    """Finish start-up work now, then block until ``path`` exists.

    The handlers are imported lazily on first request; importing them here moves that
    cost into the wait, which in the VM runs beside the rest of the boot.
    """
    import time

    import_first_handler()
    while not os.path.exists(path):
        time.sleep(poll)


class Bound:
    """The engine socket, listening; connections queue until :func:`serve` accepts them.

    In the VM the agent binds before the boot ends and says so on the console: the host
    then opens its first connection and sends its first request, answered the moment
    serving starts (no round trip after the announcement). Raises ListenerError.
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        listener, self.identity = open_unix_listener(socket_path)
        self.server = Server(listener, build_router())

    def close(self) -> None:
        self.server.close()
        remove_socket_file(self.socket_path, self.identity)


def serve(
    bound: Bound,
    announce_path: str | None = None,
    root: str | None = None,
    run_root: str = "/run/vmctl",
    preload: str | None = None,
    start_up: Callable[[], None] | None = None,
) -> int:
    """Serve the Engine API on ``bound`` until SIGTERM/SIGINT; the process's exit status.

    ``start_up`` runs beside the accept loop, then, with ``root``, the container engine's
    state lives there and is opened (containers re-adopted or restarted) in the background.
    """
    server = bound.server

    def stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if announce_path:
        write_line(announce_path, readiness_line(bound.socket_path), "announce readiness")

    def finish_start_up() -> None:
        # Beside the accept loop, after the announcement: logging's own import, the
        # machine's settings and the engine's imports would otherwise hold up the first
        # answers (0.2-0.5 s at boot under tcg). Until logging is set up here, records
        # (the first requests' among them) are held, not written.
        apply_logging()
        log.info("vmctl agent %s serving API %s on %s", __version__, API_VERSION, bound.socket_path)
        if start_up is not None:
            try:
                start_up()
            except Exception:
                log.exception("the agent's start-up failed")

    import_first_handler()  # before the opener takes the import lock
    if root is not None:
        from agent import engine_handle

        # started here, before the first request is accepted: one that needs the engine
        # waits for it (rather than being told there is none)
        engine_handle.start_in_background(
            finish_start_up, root=root, run_root=run_root, preload=preload
        )
    else:
        threading.Thread(target=finish_start_up, name="start-up", daemon=True).start()
    status = 0
    try:
        server.serve_forever()
    except Exception:
        log.exception("the accept loop failed")
        status = 1
    finally:
        bound.close()
        if root is not None:
            from agent import engine_handle

            engine_handle.close()
        log.info("stopped")
    return status
