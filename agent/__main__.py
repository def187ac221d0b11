"""``python3 -m agent``: the engine daemon's command line."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from agent import __version__
from agent.api.unix_listener import ListenerError
from agent.daemon import DEFAULT_SOCKET, Bound, listening_line, serve, wait_for, write_line
from agent.logsetup import configure_logging, get_logger

log = get_logger("agent")

TYPE_CHECKING = False  # typing itself costs a tenth of a second at the VM's boot
if TYPE_CHECKING:
    import argparse


class Option:
    """One ``--flag VALUE`` option of the agent; a ``repeat`` one collects every value."""

    def __init__(
        self,
        flag: str,
        help: str,
        default: str | None = None,
        metavar: str | None = None,
        repeat: bool = False,
        choices: tuple[str, ...] = (),
    ) -> None:
        self.flag, self.help, self.default = flag, help, default
        self.metavar, self.repeat, self.choices = metavar, repeat, choices
        self.dest = flag[2:].replace("-", "_")

    def convert(self, value: str) -> str | None:
        """The value as stored, or None when argparse must judge it (a bad choice)."""
        if not self.choices:
            return value
        value = value.upper()
        return value if value in self.choices else None


OPTIONS = (
    Option("--socket", f"socket to listen on (default {DEFAULT_SOCKET})", DEFAULT_SOCKET),
    Option("--log-file", "append the log here instead of stderr"),
    Option(
        "--announce",
        "write a VMCTL-READY line here once serving (the VM's /dev/console); with "
        "--wait-for, a line saying the socket listens first",
        metavar="PATH",
    ),
    Option(
        "--log-level",
        "least severe level logged (default INFO)",
        "INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    Option(
        "--wait-for",
        "start up and listen (connections wait), then wait until PATH exists before "
        "opening the log and serving (in the VM: the end of the boot, which Python's "
        "start-up overlaps)",
        metavar="PATH",
    ),
    Option(
        "--root",
        "run containers, keeping images, volumes and containers here "
        "(in the VM: /var/lib/vmctl on the data disk); without it only /_ping and /version",
    ),
    Option("--run-root", "ephemeral runtime files (default /run/vmctl)", "/run/vmctl"),
    Option(
        "--preload",
        "a `docker save` archive loaded into the image store once (the busybox image)",
        metavar="ARCHIVE",
    ),
    Option(
        "--insecure-registry",
        "a registry reached over plain HTTP or unverified TLS (repeatable; loopback "
        "registries always are)",
        metavar="HOST[:PORT]",
        repeat=True,
    ),
    Option(
        "--certs-dir",
        "Docker certs.d layout, DIR/<host:port>/ca.crt (repeatable; default /etc/docker/certs.d)",
        metavar="DIR",
        repeat=True,
    ),
    Option(
        "--host-loopback",
        "dial registries named localhost/127.x at ADDR (in the VM: 10.0.2.2)",
        "",
        "ADDR",
    ),
    Option(
        "--host-gateway",
        "the host's address for containers: host.docker.internal, --add-host "
        "NAME:host-gateway (in the VM: 10.0.2.2; default: the default bridge's gateway)",
        "",
        "ADDR",
    ),
    Option(
        "--published-on",
        "where a port published without an address is reachable, as inspect and "
        "`docker port` show it (in the VM: 127.0.0.1, where the host agent publishes it)",
        "",
        "ADDR",
    ),
    Option(
        "--seed",
        "the machine's settings (shell assignments, read after --wait-for): its "
        "insecure registries and the host home whose .docker/certs.d is trusted",
        "",
        "FILE",
    ),
)


def full_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python3 -m agent",
        description="vmctl agent: serves the Docker Engine API on a unix socket.",
    )
    for option in OPTIONS:
        if option.repeat:
            parser.add_argument(
                option.flag, action="append", default=[], metavar=option.metavar,
                help=option.help,
            )  # fmt: skip
        elif option.choices:
            parser.add_argument(
                option.flag, default=option.default, choices=option.choices, type=str.upper,
                help=option.help,
            )  # fmt: skip
        else:
            parser.add_argument(
                option.flag, default=option.default, metavar=option.metavar, help=option.help
            )
    parser.add_argument("--version", action="version", version=f"vmctl agent {__version__}")
    return parser


def quick_parse(argv: list[str]) -> SimpleNamespace | None:
    """The options of a well-formed command line, without importing argparse.

    In the VM the agent's start is on the way to the engine's first answer, and argparse
    (with what its formatter imports) costs ~0.2 s there under tcg. None for anything
    else (help, --version, an unknown option, a missing value, a bad choice), which
    :func:`full_parser` then answers as argparse does.
    """
    by_flag = {option.flag: option for option in OPTIONS}
    values: dict[str, object] = {
        option.dest: [] if option.repeat else option.default for option in OPTIONS
    }
    words = iter(argv)
    for word in words:
        flag, has_value, value = word.partition("=")
        option = by_flag.get(flag)
        if option is None:
            return None
        if not has_value:
            value = next(words, None)  # type: ignore[assignment]
            if value is None or value.startswith("-"):
                return None
        converted = option.convert(value)
        if converted is None:
            return None
        if option.repeat:
            values[option.dest].append(converted)  # type: ignore[attr-defined]
        else:
            values[option.dest] = converted
    return SimpleNamespace(**values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace | SimpleNamespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    return quick_parse(argv) or full_parser().parse_args(argv)


def read_seed(path: str) -> dict[str, str]:
    """The machine's settings: KEY='value' shell assignments (values may span lines)."""
    import shlex

    with open(path) as f:
        words = shlex.split(f.read(), comments=True)
    return dict(word.partition("=")[::2] for word in words if "=" in word)


def configure_registries(args: argparse.Namespace | SimpleNamespace) -> None:
    """Registry options from the command line and the machine's settings (``--seed``).

    Run by the start-up thread once the agent serves; requests that use the options wait
    for it. Unreadable settings are logged and left out, never left pending.
    """
    from agent.registry.options import DEFAULT_CERTS_DIR, RegistryOptions, configure

    insecure, certs_dirs = list(args.insecure_registry), list(args.certs_dir)
    if args.seed:
        try:
            seed = read_seed(args.seed)
        except Exception as error:  # noqa: BLE001 (the options must never stay pending)
            log.error("cannot read the machine's settings from %s: %s", args.seed, error)
            seed = {}
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
    # Listen before the wait: in the VM the host sends its first request as soon as the
    # console says so, and it is answered the moment the boot ends and serving starts.
    # The log (on the data disk there) opens after the boot; when the boot is already
    # over (the agent restarted) or there is no wait, first.
    log_first = not args.wait_for or os.path.exists(args.wait_for)
    if log_first and (status := open_log(args)):
        return status
    try:
        bound = Bound(args.socket)
    except ListenerError as error:
        print(f"error: {error}", file=sys.stderr)
        if args.log_file:  # where `vmctl machine logs --agent` looks
            if not log_first:
                wait_for(args.wait_for)
            if log_first or not open_log(args):
                log.error("%s", error)
        return 1
    if not log_first:
        if args.announce:
            write_line(args.announce, listening_line(args.socket), "say the socket listens")
        wait_for(args.wait_for)
        status = open_log(args)
        if status:
            bound.close()
            return status
    from agent.registry import options

    options.configure_pending()  # the start-up thread reads the settings; pulls wait for it
    status = serve(
        bound,
        args.announce,
        args.root,
        args.run_root,
        args.preload,
        start_up=lambda: configure_registries(args),
    )
    if status and args.log_file:
        # the reason is in the log file; point at it on stderr
        print(f"error: the agent stopped; see {args.log_file}", file=sys.stderr)
    return status


def open_log(args: argparse.Namespace | SimpleNamespace) -> int:
    """Open the log file (0), or say why not on stderr (the exit status, 1)."""
    try:
        configure_logging(args.log_file, args.log_level)
    except OSError as error:
        print(f"error: cannot open log file {args.log_file}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
