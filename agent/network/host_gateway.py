"""The host's address as containers reach it (`host-gateway`, host.docker.internal).

In the VM the agent is told (`--host-gateway 10.0.2.2`, QEMU's user-mode alias of the
host's loopback); natively it is left empty and the default bridge's gateway is used.
"""

from __future__ import annotations

import socket

_configured = ""


def configure(address: str) -> None:
    """Take ``address``; ValueError unless it is a dotted-quad IPv4 address.

    Checked with inet_pton rather than ipaddress, whose import is ~30 ms of the agent's
    start in the VM (the socket module is imported by then anyway).
    """
    global _configured
    if address:
        try:
            socket.inet_pton(socket.AF_INET, address)
        except OSError:
            raise ValueError(f"{address!r} is not an IPv4 address") from None
    _configured = address


def configured() -> str:
    return _configured
