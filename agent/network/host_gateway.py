"""The host's address as containers reach it (`host-gateway`, host.docker.internal).

In the VM the agent is told (`--host-gateway 10.0.2.2`, QEMU's user-mode alias of the
host's loopback); natively it is left empty and the default bridge's gateway is used.
"""

from __future__ import annotations

import ipaddress

_configured = ""


def configure(address: str) -> None:
    global _configured
    if address:
        ipaddress.IPv4Address(address)  # ValueError for a bad option
    _configured = address


def configured() -> str:
    return _configured
