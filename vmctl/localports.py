"""Ports on the host's loopback, where QEMU forwards the guest's SSH (and published ports)."""

from __future__ import annotations

import socket

from vmctl.errors import VmctlError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise VmctlError(
                f"port {port} on 127.0.0.1 is already in use",
                hint='free it, or set "ssh_port": 0 in the machine\'s config.json '
                "to pick a free port at each start",
            ) from None
