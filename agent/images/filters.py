"""The ``filters`` of `docker images` and `docker image prune`, read as dockerd reads them."""

from __future__ import annotations

import calendar
import datetime
import json
import re
import time
from collections.abc import Callable

from agent.errors import BadRequest
from agent.images.reference import parse
from agent.images.store import Image

LIST_KEYS = frozenset(("before", "dangling", "label", "reference", "since", "until"))
PRUNE_KEYS = frozenset(("dangling", "label", "label!", "until"))
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)
_DURATION = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h)")


def parse_filters(text: str, allowed: frozenset[str]) -> dict[str, list[str]]:
    """``{"dangling": ["true"]}`` or ``{"dangling": {"true": true}}`` -> key: values."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise BadRequest(f"invalid filter: {text}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"invalid filter: {text}")
    filters: dict[str, list[str]] = {}
    for key, value in raw.items():
        if key not in allowed:
            raise BadRequest(f"invalid filter '{key}'")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            filters[key] = list(value)
        elif isinstance(value, dict):
            filters[key] = [str(k) for k, on in value.items() if on]
        else:
            raise BadRequest(f"invalid filter '{key}': {value!r}")
    return filters


def dangling_only(filters: dict[str, list[str]], default: bool) -> bool:
    values = filters.get("dangling")
    if not values:
        return default
    for value in values:
        if value.lower() not in _TRUE + _FALSE:
            raise BadRequest(f'invalid filter "dangling={value}"')
    if len({value.lower() in _TRUE for value in values}) > 1:
        raise BadRequest("invalid filter: dangling cannot be both true and false")
    return values[0].lower() in _TRUE


def path_match(pattern: str, text: str) -> bool:
    """Go's path.Match: ``*`` and ``?`` never match a ``/``."""
    regex = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            regex.append("[^/]*")
        elif char == "?":
            regex.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            regex.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise BadRequest(f"syntax error in pattern {pattern!r}")
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            escaped = "".join("\\" + c if c in "\\]^[" else c for c in body)
            regex.append(f"[{'^' if negate else ''}{escaped}]")
            i = end
        else:
            regex.append(re.escape(char))
        i += 1
    return re.fullmatch("".join(regex), text) is not None


def reference_matches(pattern: str, tag: str) -> bool:
    """dockerd's FamiliarMatch: the pattern against ``busybox:latest``, then ``busybox``."""
    return path_match(pattern, tag) or path_match(pattern, parse(tag).familiar_name)


def created_seconds(image: Image) -> float:
    return parse_rfc3339(image.created) if image.created else 0.0


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (a date alone means its midnight UTC)."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    date, clock, fraction, zone = match.groups()
    clock = clock or "00:00:00"
    if clock.count(":") == 1:
        clock += ":00"
    seconds = calendar.timegm(time.strptime(f"{date}T{clock}", "%Y-%m-%dT%H:%M:%S"))
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    elif not zone and match.group(2):
        # docker reads a time without a zone as local time
        local = datetime.datetime.strptime(f"{date}T{clock}", "%Y-%m-%dT%H:%M:%S")
        seconds = int(local.timestamp())
    return seconds + (float(fraction) if fraction else 0.0)


def parse_timestamp(text: str, now: float) -> float:
    """Docker's filter times: unix seconds (``1700000000.5``), RFC 3339 or a date, or a Go
    duration (``10m``, ``1h30m``) before ``now``."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    if re.fullmatch(f"(?:{_DURATION.pattern})+", value):
        from agent.images.config_changes import parse_duration

        return now - parse_duration(value) / 1e9
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise BadRequest(
            f"invalid timestamp {text!r}: use unix seconds, RFC 3339 or a duration"
        ) from None


def _labels_match(image: Image, wanted: list[str]) -> bool:
    """Every ``key`` or ``key=value`` is on the image."""
    labels = (image.config.get("config") or {}).get("Labels") or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


class ImageFilter:
    """Which images (and which of their tags) a listing or a prune keeps.

    ``dangling`` differs between the two, as in dockerd: listing with ``dangling=false``
    shows only tagged images, pruning with it removes tagged and untagged ones alike
    (pruning defaults to ``dangling=true``).
    """

    def __init__(
        self,
        filters: dict[str, list[str]],
        resolve: Callable[[str], Image],
        now: float | None = None,
        prune: bool = False,
    ) -> None:
        self.filters = filters
        self.now = time.time() if now is None else now
        self.dangling = dangling_only(filters, default=prune)
        # whether untagged images are required (True), excluded (False) or either (None)
        self.untagged: bool | None = None
        if self.dangling:
            self.untagged = True
        elif "dangling" in filters and not prune:
            self.untagged = False
        self.before = min(
            (created_seconds(resolve(v)) for v in filters.get("before", [])), default=None
        )
        self.since = max(
            (created_seconds(resolve(v)) for v in filters.get("since", [])), default=None
        )
        self.until = min(
            (parse_timestamp(v, self.now) for v in filters.get("until", [])), default=None
        )
        for pattern in filters.get("reference", []):
            path_match(pattern, "")  # a malformed pattern is a 400 even with no images

    def tags(self, image: Image) -> list[str]:
        """The image's tags shown: all, or those the ``reference`` patterns match."""
        patterns = self.filters.get("reference")
        if not patterns:
            return list(image.repo_tags)
        return [t for t in image.repo_tags if any(reference_matches(p, t) for p in patterns)]

    def digests(self, image: Image) -> list[str]:
        patterns = self.filters.get("reference")
        if not patterns:
            return list(image.repo_digests)
        return [
            d
            for d in image.repo_digests
            if any(path_match(p, d) or path_match(p, d.split("@")[0]) for p in patterns)
        ]

    def matches(self, image: Image) -> bool:
        untagged = not image.repo_tags and not image.repo_digests
        if self.untagged is not None and self.untagged != untagged:
            return False
        if "reference" in self.filters and not (self.tags(image) or self.digests(image)):
            return False
        created = created_seconds(image)
        if self.before is not None and not created < self.before:
            return False
        if self.since is not None and not created > self.since:
            return False
        if self.until is not None and not created < self.until:
            return False
        if "label" in self.filters and not _labels_match(image, self.filters["label"]):
            return False
        return not (
            "label!" in self.filters
            and any(_labels_match(image, [item]) for item in self.filters["label!"])
        )


def _lineage(image: Image) -> tuple[tuple[str, ...], tuple[str, ...]]:
    history = image.config.get("history") or []
    steps = tuple(
        f"{h.get('created', '')}\0{h.get('created_by', '')}" for h in history if isinstance(h, dict)
    )
    return steps, tuple(image.diff_ids)


def intermediates(images: list[Image]) -> set[str]:
    """The ids of untagged images another image was built on (its history and layers
    begin with theirs): the steps of a classic build, which `docker images` hides
    without --all."""
    lineages = {image.id: _lineage(image) for image in images}
    found = set()
    for image in images:
        if image.repo_tags:
            continue
        steps, layers = lineages[image.id]
        for other_id, (other_steps, other_layers) in lineages.items():
            if (
                other_id != image.id
                and len(other_steps) > len(steps)
                and other_steps[: len(steps)] == steps
                and other_layers[: len(layers)] == layers
            ):
                found.add(image.id)
                break
    return found
