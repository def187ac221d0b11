"""`vmctl commit`: a container's changes as a new image, like `docker commit`."""

from __future__ import annotations

import argparse
from typing import Any

from vmctl.containers_cli import engine_for, with_hint
from vmctl.engine_client import EngineError
from vmctl.paths import Paths
from vmctl.verbs import verb_adder


def split_reference(text: str) -> tuple[str, str]:
    """REPO[:TAG] → (repo, tag); a registry port ("host:5000/x") is not a tag."""
    slash, colon = text.rfind("/"), text.rfind(":")
    if colon > slash:
        return text[:colon], text[colon + 1 :]
    return text, ""


def cmd_commit(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    repo, tag = split_reference(args.reference or "")
    try:
        image_id = engine.commit_container(
            args.container,
            repo,
            tag,
            changes=args.change or [],
            comment=args.message or "",
            author=args.author or "",
            pause=not args.no_pause,
        )
    except EngineError as e:
        raise with_hint(e) from None
    print(image_id, flush=True)
    return 0


def add_parsers(top: Any, parent: argparse.ArgumentParser) -> None:
    verb = verb_adder(top, parent)
    commit = verb("commit", cmd_commit, "make an image of a container's changes")
    commit.add_argument(
        "-c", "--change", action="append", metavar="INSTR", help='e.g. CMD ["sh"], ENV K=V'
    )
    commit.add_argument("-m", "--message", help="commit message (the history comment)")
    commit.add_argument("-a", "--author", help='author, e.g. "Jane <jane@example.com>"')
    commit.add_argument(
        "--no-pause", action="store_true", help="do not pause a running container meanwhile"
    )
    commit.add_argument("container", metavar="CONTAINER")
    commit.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
