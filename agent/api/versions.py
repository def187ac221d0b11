"""The Engine API versions the agent serves, and moby's rules for comparing them.

The agent advertises only what it really serves: clients negotiate down to ``API_VERSION``
(from the ``Api-Version`` header of ``/_ping`` or ``ApiVersion`` of ``/version``).
"""

from __future__ import annotations

from agent.errors import BadRequest

API_VERSION = "1.50"
MIN_API_VERSION = "1.24"


def version_key(version: str) -> tuple[int, ...]:
    """Numeric key of a dotted version; like moby, a part that is not a number counts as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is lower than, equal to or higher than ``b`` ("1.5" == "1.5.0")."""
    ka, kb = version_key(a), version_key(b)
    width = max(len(ka), len(kb))
    ka += (0,) * (width - len(ka))
    kb += (0,) * (width - len(kb))
    return (ka > kb) - (ka < kb)


def check_client_version(version: str) -> None:
    """Reject a ``/vX.Y`` path prefix outside the served range, with dockerd's wording."""
    if compare_versions(version, MIN_API_VERSION) < 0:
        raise BadRequest(
            f"client version {version} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version"
        )
    if compare_versions(version, API_VERSION) > 0:
        raise BadRequest(
            f"client version {version} is too new. Maximum supported API version is {API_VERSION}"
        )
