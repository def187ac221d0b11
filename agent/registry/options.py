"""How the engine reaches registries, set once from the agent's command line."""

from __future__ import annotations

import threading

DEFAULT_CERTS_DIR = "/etc/docker/certs.d"


class RegistryOptions:
    """Set before the agent listens, so a plain class: a dataclass would pull `inspect`
    and `ast` into the start-up, which under tcg delays the engine's first answer."""

    __slots__ = ("insecure_registries", "certs_dirs", "host_loopback")

    def __init__(
        self,
        insecure_registries: tuple[str, ...] = (),
        certs_dirs: tuple[str, ...] = (DEFAULT_CERTS_DIR,),
        host_loopback: str = "",
    ) -> None:
        # "host[:port]" names allowed over plain HTTP (loopback registries always are)
        self.insecure_registries = insecure_registries
        # Docker's certs.d layout: <dir>/<host:port>/ca.crt (and *.crt, client.cert/.key)
        self.certs_dirs = certs_dirs
        # In the VM the host's loopback is reachable at another address (QEMU user-mode
        # network: 10.0.2.2): registries named localhost/127.x are connected there instead.
        self.host_loopback = host_loopback

    def __repr__(self) -> str:
        return (
            f"RegistryOptions(insecure_registries={self.insecure_registries!r}, "
            f"certs_dirs={self.certs_dirs!r}, host_loopback={self.host_loopback!r})"
        )


_current = RegistryOptions()
_settled = threading.Event()
_settled.set()
SETTLE_TIMEOUT = 60.0  # seconds: a start-up that never configures must not hang requests


def configure_pending() -> None:
    """:func:`configure` follows shortly (the agent reads the machine's settings once it
    serves): until then :func:`current` waits, so no request sees the defaults instead."""
    _settled.clear()


def configure(options: RegistryOptions) -> None:
    global _current
    _current = options
    _settled.set()


def current() -> RegistryOptions:
    _settled.wait(SETTLE_TIMEOUT)
    return _current
