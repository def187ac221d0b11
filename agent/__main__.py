"""``python3 -m agent``: the engine daemon's command line."""

from __future__ import annotations

import argparse
import sys

from agent import __version__
from agent.daemon import DEFAULT_SOCKET, run, wait_for
from agent.logsetup import configure_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m agent",
        description="vmctl agent: serves the Docker Engine API on a unix socket.",
    )
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, help=f"socket to listen on (default {DEFAULT_SOCKET})"
    )
    parser.add_argument("--log-file", help="append the log here instead of stderr")
    parser.add_argument(
        "--announce",
        metavar="PATH",
        help="once listening, write a VMCTL-READY line here (the VM's /dev/console)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="least severe level logged (default INFO)",
    )
    parser.add_argument(
        "--wait-for",
        metavar="PATH",
        help="start up, then wait until PATH exists before logging and listening "
        "(in the VM: the end of the boot, so Python's start-up overlaps it)",
    )
    parser.add_argument(
        "--root",
        help="run containers, keeping images, volumes and containers here "
        "(in the VM: /var/lib/vmctl on the data disk); without it only /_ping and /version",
    )
    parser.add_argument(
        "--run-root", default="/run/vmctl", help="ephemeral runtime files (default /run/vmctl)"
    )
    parser.add_argument(
        "--preload",
        metavar="ARCHIVE",
        help="a `docker save` archive loaded into the image store once (the busybox image)",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a registry reached over plain HTTP or unverified TLS (repeatable; loopback "
        "registries always are)",
    )
    parser.add_argument(
        "--certs-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="Docker certs.d layout, DIR/<host:port>/ca.crt (repeatable; default "
        "/etc/docker/certs.d)",
    )
    parser.add_argument(
        "--host-loopback",
        default="",
        metavar="ADDR",
        help="dial registries named localhost/127.x at ADDR (in the VM: 10.0.2.2)",
    )
    parser.add_argument(
        "--host-gateway",
        default="",
        metavar="ADDR",
        help="the host's address for containers: host.docker.internal, --add-host "
        "NAME:host-gateway (in the VM: 10.0.2.2; default: the default bridge's gateway)",
    )
    parser.add_argument(
        "--published-on",
        default="",
        metavar="ADDR",
        help="where a port published without an address is reachable, as inspect and "
        "`docker port` show it (in the VM: 127.0.0.1, where the host agent publishes it)",
    )
    parser.add_argument(
        "--seed",
        default="",
        metavar="FILE",
        help="the machine's settings (shell assignments, read after --wait-for): its "
        "insecure registries and the host home whose .docker/certs.d is trusted",
    )
    parser.add_argument("--version", action="version", version=f"vmctl agent {__version__}")
    return parser.parse_args(argv)


def read_seed(path: str) -> dict[str, str]:
    """The machine's settings: KEY='value' shell assignments (values may span lines)."""
    import shlex

    with open(path) as f:
        words = shlex.split(f.read(), comments=True)
    return dict(word.partition("=")[::2] for word in words if "=" in word)


def configure_registries(args: argparse.Namespace) -> None:
    from agent.registry.options import DEFAULT_CERTS_DIR, RegistryOptions, configure

    insecure, certs_dirs = list(args.insecure_registry), list(args.certs_dir)
    if args.seed:
        seed = read_seed(args.seed)
        insecure += seed.get("VMCTL_INSECURE_REGISTRIES", "").split()
        # the host user's ~/.docker/certs.d is at the same path here, through the home share
        if seed.get("VMCTL_HOST_HOME"):
            certs_dirs += [DEFAULT_CERTS_DIR, seed["VMCTL_HOST_HOME"] + "/.docker/certs.d"]
    configure(
        RegistryOptions(
            insecure_registries=tuple(insecure),
            certs_dirs=tuple(certs_dirs or [DEFAULT_CERTS_DIR]),
            host_loopback=args.host_loopback,
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from agent.network import host_gateway, published

    published.set_published_on(args.published_on)

    try:
        host_gateway.configure(args.host_gateway)
    except ValueError:
        print(f"error: --host-gateway {args.host_gateway!r} is not IPv4", file=sys.stderr)
        return 2
    if args.wait_for:
        wait_for(args.wait_for)
    try:
        configure_registries(args)
    except OSError as error:
        print(f"error: cannot read the machine's settings: {error}", file=sys.stderr)
        return 2
    try:
        configure_logging(args.log_file, args.log_level)
    except OSError as error:
        print(f"error: cannot open log file {args.log_file}: {error}", file=sys.stderr)
        return 1
    status = run(args.socket, args.announce, args.root, args.run_root, args.preload)
    if status and args.log_file:
        # the reason is in the log file; point at it on stderr
        print(f"error: the agent could not start; see {args.log_file}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
