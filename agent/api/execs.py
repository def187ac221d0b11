"""Exec endpoints: create, start (hijacked or detached), resize, inspect."""

from __future__ import annotations

import contextlib
import os
import threading

from agent import engine_handle
from agent.api.request import Request
from agent.api.response import MULTIPLEXED_STREAM_TYPE, RAW_STREAM_TYPE, ResponseWriter
from agent.api.streams import frame
from agent.containers.manager import ContainerManager
from agent.containers.prepare import console_size
from agent.errors import AgentError, BadRequest, Conflict
from agent.runtime.linux import set_window_size
from agent.runtime.nsexec import ExecProcess


def _manager() -> ContainerManager:
    return engine_handle.current().containers


def create(request: Request, response: ResponseWriter) -> None:
    instance = _manager().exec_create(request.params["id"], request.json_object())
    response.send_json({"Id": instance.id}, status=201)


def start(request: Request, response: ResponseWriter) -> None:
    manager = _manager()
    exec_id = request.params["id"]
    body = request.json_object()
    instance, _ = manager.exec_check(exec_id)
    if "Tty" in body:
        instance.config["Tty"] = bool(body["Tty"])
    if body.get("Detach"):
        handle = _start(manager, exec_id, body)
        threading.Thread(target=manager.exec_finish, args=(exec_id, handle), daemon=True).start()
        response.send(200)
        return
    tty = bool(instance.config.get("Tty"))
    multiplexed = not tty and request.version_at_least("1.42")
    # The stream is taken over before the process starts, as dockerd does: a client that
    # reads the 101 head through a buffered reader (the Python SDK) would otherwise lose
    # output that arrived in the same read. A start failure is then told in the stream.
    raw = response.hijack(MULTIPLEXED_STREAM_TYPE if multiplexed else RAW_STREAM_TYPE)
    with raw:
        try:
            handle = _start(manager, exec_id, body)
        except AgentError as error:
            message = (error.message + "\r\n").encode()
            with contextlib.suppress(OSError):
                raw.sendall(message if not multiplexed else frame(1, message))
            return
        if handle.stdin is not None and instance.config.get("AttachStdin"):
            threading.Thread(target=_pump_input, args=(raw, handle), daemon=True).start()
        outputs = [(1, handle.stdout)] if tty else [(1, handle.stdout), (2, handle.stderr)]
        threads = [
            threading.Thread(target=_pump_output, args=(raw, fd, stream, tty), daemon=True)
            for stream, fd in outputs
            if fd is not None
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        manager.exec_finish(exec_id, handle)  # before the close: the CLI asks for ExitCode next


def _start(manager: ContainerManager, exec_id: str, body: dict[str, object]) -> ExecProcess:
    handle = manager.exec_start(exec_id)
    manager.exec_get(exec_id).handle = handle
    size = console_size(body.get("ConsoleSize"))
    if handle.terminal is not None and size is not None:
        _set_size(handle.terminal, *size)
    return handle


def _pump_output(raw: object, fd: int, stream: int, tty: bool) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO from a terminal whose processes all exited
            return
        if not data:
            return
        try:
            raw.sendall(data if tty else frame(stream, data))  # type: ignore[attr-defined]
        except OSError:
            return


def _pump_input(raw: object, handle: ExecProcess) -> None:
    assert handle.stdin is not None
    try:
        while True:
            data = raw.recv(65536)  # type: ignore[attr-defined]
            if not data:
                break
            os.write(handle.stdin, data)
    except OSError:
        return
    if handle.terminal is None:
        with contextlib.suppress(OSError):
            os.close(handle.stdin)
            handle.stdin = None


def _set_size(terminal: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        set_window_size(terminal, rows, cols)


def resize(request: Request, response: ResponseWriter) -> None:
    instance = _manager().exec_get(request.params["id"])
    handle = instance.handle
    if handle is None or handle.terminal is None:
        if handle is None:
            raise Conflict(f"exec {instance.id} is not running")
        raise BadRequest("the exec has no terminal to resize")
    _set_size(handle.terminal, request.int_arg("h"), request.int_arg("w"))
    response.send(200)


def inspect(request: Request, response: ResponseWriter) -> None:
    instance = _manager().exec_get(request.params["id"])
    config = instance.config
    argv = list(config.get("Cmd") or [])
    response.send_json(
        {
            "ID": instance.id,
            "Running": instance.running,
            "ExitCode": instance.exit_code,
            "ProcessConfig": {
                "tty": bool(config.get("Tty")),
                "entrypoint": argv[0] if argv else "",
                "arguments": argv[1:],
                "privileged": bool(config.get("Privileged")),
                "user": config.get("User") or "",
            },
            "OpenStdin": bool(config.get("AttachStdin")),
            "OpenStderr": bool(config.get("AttachStderr")),
            "OpenStdout": bool(config.get("AttachStdout")),
            "CanRemove": False,
            "ContainerID": instance.container_id,
            "DetachKeys": "",
            "Pid": instance.pid,
        }
    )
