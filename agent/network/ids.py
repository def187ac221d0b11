"""IDs of the built-in networks (bridge, host, none).

dockerd gives every network a random 64-hex ID; the agent's built-in networks are the same
on every start and every machine, so their IDs are derived from their names: stable across
restarts (a client may keep one) and never mistaken for a name.
"""

from __future__ import annotations

import hashlib

BUILTIN_NETWORKS = ("bridge", "host", "none")


def network_id(name: str) -> str:
    return hashlib.sha256(f"vmctl built-in network {name}".encode()).hexdigest()
