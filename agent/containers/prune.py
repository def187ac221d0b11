"""`docker container prune`: remove the stopped containers the filters select.

Filters as dockerd takes them: ``until`` (a unix time, an RFC 3339 time or date, or a Go
duration such as ``10m`` or ``1h30m`` back from now: containers created before it),
``label`` (``key`` or ``key=value``, all must match) and ``label!`` (none may match).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from typing import Any

from agent.containers.changes import upper_size
from agent.containers.model import CREATED, DEAD, EXITED, Container
from agent.errors import AgentError, BadRequest
from agent.runtime.logfile import parse_timestamp

PRUNABLE = (CREATED, EXITED, DEAD)
FILTERS = ("until", "label", "label!")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def parse_duration(text: str) -> float | None:
    """Go's time.ParseDuration ("1h30m", "90s", "1.5h") in seconds, or None."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if not body or _DURATION_PART.sub("", body):
        return None
    return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(body))


def parse_until(text: str, now: float) -> float:
    """A filter's time: unix seconds, RFC 3339 (with or without zone) or a duration ago."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    duration = parse_duration(value)
    if duration is not None:
        return now - duration
    zone = 0.0
    match = re.search(r"(Z|[+-]\d\d:\d\d)$", value)
    if match:
        value = value[: match.start()]
        if match.group(1) != "Z":
            hours, minutes = match.group(1)[1:].split(":")
            zone = (int(hours) * 3600 + int(minutes) * 60) * (1 if match.group(1)[0] == "+" else -1)
    whole, _, fraction = value.partition(".")
    for layout in _TIME_FORMATS:
        try:
            parsed = time.strptime(whole, layout)
        except ValueError:
            continue
        seconds = calendar.timegm(parsed) if match else time.mktime(parsed)
        return seconds - zone + (float("0." + fraction) if fraction.isdigit() else 0.0)
    raise BadRequest(f'failed to parse value as time or duration: "{text}"')


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    """All of ``wanted`` ("key" or "key=value") match."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def selector(filters: dict[str, list[str]], now: float) -> Callable[[Container], bool]:
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise BadRequest(f"Invalid filter '{unknown[0]}'")
    untils = [parse_until(value, now) for value in filters.get("until", [])]
    include = filters.get("label", [])
    exclude = filters.get("label!", [])

    def selected(container: Container) -> bool:
        if container.state.status not in PRUNABLE:
            return False
        if untils:
            created = parse_timestamp(container.created) / 1e9
            if not all(created < until for until in untils):
                return False
        labels = container.config.get("Labels") or {}
        if include and not _labels_match(labels, include):
            return False
        return not any(_labels_match(labels, [item]) for item in exclude)

    return selected


def prune(manager: Any, filters: dict[str, list[str]]) -> dict[str, Any]:
    """Remove what the filters select; dockerd's answer (``null`` when nothing went)."""
    selected = selector(filters, time.time())
    deleted: list[str] = []
    reclaimed = 0
    for container in manager.all():
        if not selected(container):
            continue
        size = upper_size(container.upper)
        try:
            manager.remove(container.id)
        except AgentError:  # started (or removed) meanwhile: not ours to take
            continue
        deleted.append(container.id)
        reclaimed += size
    return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}
