"""The agent process: listen, announce readiness, serve until SIGTERM/SIGINT, clean up."""

from __future__ import annotations

import logging
import os
import signal

from agent import __version__
from agent.api.routes import build_router
from agent.api.server import Server
from agent.api.unix_listener import ListenerError, open_unix_listener, remove_socket_file
from agent.api.versions import API_VERSION

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/vmctl/engine.sock"


def readiness_line(socket_path: str) -> str:
    """The line the host watches for on the console to know the engine is up."""
    return f"VMCTL-READY agent={__version__} api={API_VERSION} socket={socket_path}\n"


def announce(path: str, socket_path: str) -> None:
    """Write the readiness line to ``path`` (the console in the VM); failures only logged."""
    try:
        # O_NOCTTY: opening a terminal must not make it our controlling terminal
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY, 0o644)
        try:
            os.write(fd, readiness_line(socket_path).encode())
        finally:
            os.close(fd)
    except OSError as error:
        log.error("could not announce readiness on %s: %s", path, error)


def wait_for(path: str, poll: float = 0.02) -> None:
    """Finish start-up work now, then block until ``path`` exists.

    The handlers are imported lazily on first request; importing them here moves that
    cost into the wait, which in the VM runs beside the rest of the boot.
    """
    import importlib
    import time

    importlib.import_module("agent.api.system")  # /_ping's handler: the host's first request
    while not os.path.exists(path):
        time.sleep(poll)


def run(
    socket_path: str,
    announce_path: str | None = None,
    root: str | None = None,
    run_root: str = "/run/vmctl",
    preload: str | None = None,
) -> int:
    """Serve the Engine API on ``socket_path``; the exit status for the process.

    With ``root``, the container engine's state lives there and is opened (containers
    re-adopted or restarted) in the background once the socket listens.
    """
    router = build_router()
    try:
        listener, identity = open_unix_listener(socket_path)
    except ListenerError as error:
        log.error("%s", error)
        return 1
    server = Server(listener, router)

    def stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("vmctl agent %s serving API %s on %s", __version__, API_VERSION, socket_path)
    if announce_path:
        announce(announce_path, socket_path)
    if root is not None:
        # After the announcement: the engine's imports would otherwise take the GIL from
        # the steps before it (0.2-0.5 s at boot under tcg). Requests wait for the engine.
        from agent import engine_handle

        engine_handle.start_in_background(root=root, run_root=run_root, preload=preload)
    status = 0
    try:
        server.serve_forever()
    except Exception:
        log.exception("the accept loop failed")
        status = 1
    finally:
        server.close()
        remove_socket_file(socket_path, identity)
        if root is not None:
            from agent import engine_handle

            engine_handle.close()
        log.info("stopped")
    return status
