"""Registry credentials (docker's X-Registry-Auth) and ``Www-Authenticate`` challenges."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from agent.errors import BadRequest


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth refresh token (docker login with a token)
    registry_token: str = ""  # a bearer token used as it is

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.identity_token or self.registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def from_json(data: object) -> Credentials:
    if not isinstance(data, dict):
        raise BadRequest("registry credentials must be a JSON object")

    def text(key: str) -> str:
        value = data.get(key) or ""
        if not isinstance(value, str):
            raise BadRequest(f"registry credentials: {key} must be a string")
        return value

    return Credentials(
        text("username"), text("password"), text("identitytoken"), text("registrytoken")
    )


def decode_header(value: str) -> Credentials:
    """The X-Registry-Auth header: base64url JSON (padding optional); empty → anonymous."""
    value = value.strip()
    if not value:
        return Credentials()
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        data = json.loads(raw) if raw.strip() else {}
    except (binascii.Error, ValueError):
        raise BadRequest("invalid X-Registry-Auth header: not base64url-encoded JSON") from None
    return from_json(data)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lowercase
    params: dict[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """``Bearer realm="https://a/token",service="r",scope="repository:x:pull"`` and the like.

    Several challenges may share one header (``Basic realm="x", Bearer realm="y"``).
    """
    challenges: list[Challenge] = []
    rest = header.strip()
    while rest:
        match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if match is None:
            break
        scheme = match.group(1).lower()
        rest = rest[match.end() :]
        params: dict[str, str] = {}
        while rest:
            param = _PARAM_RE.match(rest)
            if param is None:
                break
            # a bare word followed by a space is the next challenge's scheme, not a param
            value = param.group(2) if param.group(2) is not None else param.group(3)
            params[param.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            rest = rest[param.end() :]
        challenges.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return challenges


def pick(challenges: list[Challenge]) -> Challenge | None:
    """Bearer when offered (tokens carry scopes), else Basic."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None
