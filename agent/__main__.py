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
    parser.add_argument("--version", action="version", version=f"vmctl agent {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wait_for:
        wait_for(args.wait_for)
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
