"""`vmctl pull` and `vmctl push`, as their docker namesakes.

Credentials come from the docker CLI's config (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``, the ``auths`` entries `docker login` writes); credential helpers
are not consulted. On a terminal each layer's progress shows on its own line, updated in
place; otherwise only the outcome is printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from agent.images.reference import InvalidReference, parse
from vmctl.containers_cli import engine_for, with_hint
from vmctl.engine_client import EngineError
from vmctl.errors import VmctlError
from vmctl.paths import Paths
from vmctl.verbs import VerbAdder

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")


def docker_config_file() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(Path.home(), ".docker")
    return Path(base) / "config.json"


def registry_auth(domain: str, config_file: Path | None = None) -> str:
    """The X-Registry-Auth value for ``domain`` from docker's config; "" when none."""
    try:
        config = json.loads((config_file or docker_config_file()).read_text())
    except (OSError, ValueError):
        return ""
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return ""
    keys = DOCKER_HUB_KEYS if domain == "docker.io" else (domain, f"https://{domain}")
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        payload: dict[str, str] = {"serveraddress": domain}
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            payload |= {"username": user, "password": password}
        if isinstance(entry.get("identitytoken"), str):
            payload["identitytoken"] = entry["identitytoken"]
        raw = json.dumps(payload).encode()
        return base64.urlsafe_b64encode(raw).decode()
    return ""


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.3g}{unit}"
        count /= 1000
    return f"{count:.3g}GB"


class ProgressView:
    """Prints progress messages: per-layer lines updated in place on a terminal."""

    def __init__(self, out: TextIO, terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        self.order: list[str] = []  # layer ids, in the order their lines were printed
        self.lines: dict[str, str] = {}

    def show(self, message: dict[str, Any]) -> None:
        status = str(message.get("status") or "")
        layer = str(message.get("id") or "")
        if "aux" in message or not status:
            return
        detail = message.get("progressDetail") or {}
        if isinstance(detail, dict) and detail.get("total"):
            status += f"  {_size(detail.get('current', 0))}/{_size(detail['total'])}"
        if not layer or not self.terminal or ":" in status and layer not in self.lines:
            self._plain(status, layer)
            return
        if layer not in self.lines:
            self.order.append(layer)
            self.lines[layer] = ""
            self.out.write("\n")
        self.lines[layer] = status
        up = len(self.order) - self.order.index(layer)
        self.out.write(f"\x1b[{up}A\r\x1b[2K{layer}: {status}\x1b[{up}B\r")
        self.out.flush()

    def _plain(self, status: str, layer: str) -> None:
        if not self.terminal and layer and not status.startswith(("Digest", "Status")):
            return  # quiet without a terminal: only the outcome
        self.out.write(f"{layer}: {status}\n" if layer else f"{status}\n")
        self.out.flush()


def _follow(messages: Iterator[dict[str, Any]], view: ProgressView) -> None:
    for message in messages:
        view.show(message)


def _split(name: str) -> tuple[str, str]:
    try:
        ref = parse(name, default_tag=None)
    except InvalidReference as e:
        raise VmctlError(e.message) from None
    return str(ref), ref.domain


def cmd_pull(paths: Paths, args: argparse.Namespace) -> int:
    name, domain = _split(args.image)
    engine = engine_for(paths, args)
    view = ProgressView(sys.stdout, sys.stdout.isatty() and not args.quiet)
    try:
        messages = engine.pull_image(name, platform=args.platform or "",
                                     registry_auth=registry_auth(domain))  # fmt: skip
        if args.quiet:
            for _ in messages:
                pass
            print(name)
        else:
            _follow(messages, view)
    except EngineError as e:
        raise with_hint(e) from None
    return 0


def cmd_push(paths: Paths, args: argparse.Namespace) -> int:
    name, domain = _split(args.image)
    engine = engine_for(paths, args)
    view = ProgressView(sys.stdout, sys.stdout.isatty() and not args.quiet)
    try:
        for message in engine.push_image(name, registry_auth=registry_auth(domain)):
            status = str(message.get("status") or "")
            if ": digest: " in status:
                print(status, flush=True)  # the outcome, terminal or not
            elif not args.quiet:
                view.show(message)
    except EngineError as e:
        raise with_hint(e) from None
    return 0


def add_parsers(verb: VerbAdder) -> None:
    pull = verb("pull", cmd_pull, "download an image from a registry (like docker pull)")
    pull.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    pull.add_argument("--platform", metavar="OS/ARCH", help="the platform to pick")
    pull.add_argument("-q", "--quiet", action="store_true", help="print only the name")
    push = verb("push", cmd_push, "upload an image to a registry (like docker push)")
    push.add_argument("image", metavar="NAME[:TAG]")
    push.add_argument("-q", "--quiet", action="store_true", help="print only the digest line")
