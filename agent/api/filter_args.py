"""The ``filters`` query parameter of list, prune and events endpoints.

Clients send a JSON object in one of two encodings: ``{"name": ["a", "b"]}`` (docker-py,
old CLIs) or ``{"name": {"a": true, "b": true}}`` (the Go client). Both become
``{"name": ["a", "b"]}``; anything else is a 400, as is a key the endpoint does not know.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from agent.errors import BadRequest

Filters = dict[str, list[str]]

_TRUE = ("true", "1")
_FALSE = ("false", "0")


def parse_filters(text: str, allowed: Iterable[str] | None = None) -> Filters:
    """The decoded filters; ``allowed`` (when given) lists the keys the endpoint accepts."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise BadRequest(f"invalid filter: {text!r} is not JSON") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("invalid filter: expected a JSON object of filter names")
    accepted = set(allowed) if allowed is not None else None
    result: Filters = {}
    for key, value in raw.items():
        if accepted is not None and key not in accepted:
            raise BadRequest(f"invalid filter '{key}'")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            values = list(value)
        elif isinstance(value, dict) and all(isinstance(v, bool) for v in value.values()):
            values = [k for k, on in value.items() if on]
        else:
            raise BadRequest(f"invalid filter '{key}': values must be a list of strings")
        if values:
            result[key] = values
    return result


def bool_filter(filters: Filters, key: str) -> bool | None:
    """A boolean filter (``dangling=true``): None when absent; 400 when not a boolean or
    when it says both."""
    values = {v.strip().lower() for v in filters.get(key, [])}
    if not values:
        return None
    if not values <= set(_TRUE + _FALSE):
        bad = sorted(values - set(_TRUE + _FALSE))[0]
        raise BadRequest(f"invalid filter '{key}={bad}': expected true, false, 1 or 0")
    wants = {v in _TRUE for v in values}
    if len(wants) > 1:
        raise BadRequest(f"invalid filter '{key}': both true and false given")
    return wants.pop()


def match_labels(labels: dict[str, str] | None, wanted: list[str]) -> bool:
    """Every ``key`` or ``key=value`` of ``wanted`` holds for ``labels``."""
    labels = labels or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True
