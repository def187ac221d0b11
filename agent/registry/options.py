"""How the engine reaches registries, set once from the agent's command line."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CERTS_DIR = "/etc/docker/certs.d"


@dataclass(frozen=True)
class RegistryOptions:
    # "host[:port]" names allowed over plain HTTP (loopback registries always are)
    insecure_registries: tuple[str, ...] = ()
    # Docker's certs.d layout: <dir>/<host:port>/ca.crt (and *.crt, client.cert/.key)
    certs_dirs: tuple[str, ...] = (DEFAULT_CERTS_DIR,)
    # In the VM the host's loopback is reachable at another address (QEMU user-mode
    # network: 10.0.2.2): registries named localhost/127.x are connected there instead.
    host_loopback: str = ""


_current = RegistryOptions()


def configure(options: RegistryOptions) -> None:
    global _current
    _current = options


def current() -> RegistryOptions:
    return _current
