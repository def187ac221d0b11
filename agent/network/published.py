"""Where a port published without an address is reachable, as inspect, ps and `docker
port` show it: every address natively (0.0.0.0); in the VM the host agent publishes it
on the host's 127.0.0.1 (agent option --published-on).

Apart from `ports`, so setting it at start-up does not import the port code before the
agent listens.
"""

from __future__ import annotations

_address = "0.0.0.0"


def set_published_on(address: str) -> None:
    global _address
    _address = address or "0.0.0.0"


def published_on() -> str:
    return _address
