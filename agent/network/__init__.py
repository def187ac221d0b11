"""Container networking: an rtnetlink client, address management and the default bridge.

The modules are `netlink` (NETLINK_ROUTE messages over a raw socket, no `ip` helper),
`ipam` (persistent address leases) and `bridge` (the default bridge network and the veth
pair of each container). This package module only holds the shared error type, so importing
it stays cheap and free of cycles.
"""

from __future__ import annotations

from agent.errors import AgentError


class NetworkError(AgentError):
    """Setting up container networking failed; the message names the item and a remedy."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message)
