"""How the engine verbs (`vmctl run`, `images`, `cp`, …) are registered on vmctl's parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

VerbAdder = Callable[[str, Any, str], argparse.ArgumentParser]


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
