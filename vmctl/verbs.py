"""How the engine verbs (`vmctl run`, `images`, `cp`, …) are registered on vmctl's parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

VerbAdder = Callable[[str, Any, str], argparse.ArgumentParser]

# The engine verbs, here rather than with their parsers (vmctl/containers_cli.py): the
# command line needs their names for every command, machine start included, and their
# module imports the engine client.
VERBS: tuple[str, ...] = ("run", "ps", "logs", "exec", "start", "stop", "rm", "inspect")
VERBS += ("kill", "restart")
VERBS += ("volume", "info")  # vmctl/system_cli.py
VERBS += ("cp", "top", "stats")  # vmctl/copy_cli.py
VERBS += ("images", "rmi", "load", "save", "tag")  # vmctl/images_cli.py
VERBS += ("commit",)  # vmctl/commit_cli.py
VERBS += ("pull", "push")  # vmctl/registry_cli.py
VERBS += ("port",)  # vmctl/port_cli.py
VERBS += ("network",)  # vmctl/network_cli.py


def verb_adder(top: Any, parent: argparse.ArgumentParser) -> VerbAdder:
    """A function adding one verb (name, handler, help) that takes the engine options of
    ``parent`` (--machine, --host) and no abbreviated options."""

    def verb(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = top.add_parser(
            name, help=help, description=help, parents=[parent], allow_abbrev=False
        )
        p.set_defaults(func=func)
        return p

    return verb
