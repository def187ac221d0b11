"""Where a registry is, and how to talk to it: scheme, TLS trust, the address to dial.

A registry's *name* (``localhost:5000``, ``registry-1.docker.io``) is what the Host header,
the TLS server name and the certs.d directory use; the *address* dialled differs from it only
for loopback names when the engine has a host-loopback alias (in the VM the host's
127.0.0.1 is 10.0.2.2). Plain HTTP is allowed only for loopback registries and the ones
the engine was told are insecure; those try HTTPS (unverified) first, as dockerd does.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from agent.images.reference import DEFAULT_DOMAIN
from agent.registry.options import RegistryOptions

DOCKER_HUB_REGISTRY = "registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    name: str  # "host[:port]" as the registry is named
    host: str  # the host part, without brackets
    port: int | None
    connect_host: str  # the address actually dialled
    insecure: bool  # plain HTTP allowed, and TLS not verified

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.insecure else ("https",)

    def default_port(self, scheme: str) -> int:
        return self.port if self.port is not None else (443 if scheme == "https" else 80)


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]+")


def split_host_port(name: str) -> tuple[str, int | None]:
    """``"[::1]:5000"`` → ``("::1", 5000)``; ``"example.com"`` → ``("example.com", None)``."""
    if name.startswith("["):
        host, _, rest = name[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif name.count(":") == 1:
        host, _, port = name.partition(":")
    else:
        host, port = name, ""
    if port and not (port.isascii() and port.isdigit()):
        raise ValueError(f"invalid port in registry name {name!r}")
    if not _HOST.fullmatch(host):
        raise ValueError(f"invalid registry name {name!r}: expected host[:port]")
    return host, (int(port) if port else None)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_name(domain: str) -> str:
    """The registry serving a reference's domain (Docker Hub's API lives elsewhere)."""
    return DOCKER_HUB_REGISTRY if domain in (DEFAULT_DOMAIN, "index.docker.io") else domain


def _listed(name: str, host: str, listed: tuple[str, ...]) -> bool:
    return name in listed or host in listed


def resolve(domain: str, options: RegistryOptions) -> Endpoint:
    name = registry_name(domain)
    host, port = split_host_port(name)
    loopback = is_loopback(host)
    connect = options.host_loopback if loopback and options.host_loopback else host
    insecure = loopback or _listed(name, host, options.insecure_registries)
    return Endpoint(name, host, port, connect, insecure)


def ssl_context(
    endpoint: Endpoint, options: RegistryOptions, verify: bool = True
) -> ssl.SSLContext:
    """System CAs plus certs.d's ``*.crt`` for this registry; a client cert if one is there."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
    for directory in certs_dirs(endpoint, options):
        if verify:
            for ca in sorted(directory.glob("*.crt")):
                context.load_verify_locations(cafile=str(ca))
        cert, key = directory / "client.cert", directory / "client.key"
        if cert.exists() and key.exists():
            context.load_cert_chain(str(cert), str(key))
    return context


def certs_dirs(endpoint: Endpoint, options: RegistryOptions) -> list[Path]:
    found = []
    for base in options.certs_dirs:
        directory = Path(base) / endpoint.name
        if directory.is_dir():
            found.append(directory)
    return found
