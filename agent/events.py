"""The engine's event bus: what `docker events` streams, in dockerd's shape.

Everything that happens to a container, an image, a volume or a network is published here
as an :class:`Event`; ``GET /events`` subscribes. The bus keeps a bounded backlog in memory
(``since``/``until`` replay from it, as dockerd does from its own ring of recent events) and
one bounded queue per subscriber: a subscriber that falls that far behind is cut off rather
than letting the engine's memory grow. Publishing never blocks and never fails.

Code outside the container manager publishes through :func:`publish`, e.g.
``events.publish("image", "pull", image_id, {"name": "busybox:latest"})``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import BadRequest
from agent.network.ids import network_id

if TYPE_CHECKING:
    from agent.containers.model import Container
    from agent.volumes.store import Volume

log = logging.getLogger(__name__)

BACKLOG = 1024  # events kept for since/until replay
SUBSCRIBER_QUEUE = 4096  # events a slow reader may lag behind before it is cut off

# the filter keys dockerd accepts on /events (a key outside these is a 400)
FILTER_KEYS = frozenset(
    (
        "config",
        "container",
        "daemon",
        "event",
        "image",
        "label",
        "network",
        "node",
        "plugin",
        "scope",
        "secret",
        "service",
        "type",
        "volume",
    )
)
# actions that carry a suffix ("exec_create: sh -c …"): a filter on the bare word matches them
_PREFIX_ACTIONS = frozenset(("exec_create", "exec_start", "health_status"))


@dataclass(frozen=True)
class Event:
    type: str  # container, image, volume, network, daemon, …
    action: str
    actor_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    time_nano: int = 0
    scope: str = "local"

    def to_json(self) -> dict[str, Any]:
        """The EventMessage document."""
        doc: dict[str, Any] = {}
        if self.type in ("container", "image"):
            # the pre-1.22 fields dockerd still sends for these types; older SDK code reads them
            doc["status"] = self.action
            doc["id"] = self.actor_id
            if self.type == "container" and "image" in self.attributes:
                doc["from"] = self.attributes["image"]
        doc.update(
            Type=self.type,
            Action=self.action,
            Actor={"ID": self.actor_id, "Attributes": dict(self.attributes)},
            scope=self.scope,
            time=self.time_nano // 1_000_000_000,
            timeNano=self.time_nano,
        )
        return doc


# --- filters ---------------------------------------------------------------------------------


def _strip_tag(name: str) -> str:
    """``busybox:latest`` → ``busybox`` (a registry port is not a tag; digests go too)."""
    name = name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


class EventFilter:
    """dockerd's event filter: every key given must match; values of one key are alternatives."""

    def __init__(self, filters: dict[str, list[str]] | None = None) -> None:
        filters = {k: list(v) for k, v in (filters or {}).items() if v}
        for key in filters:
            if key not in FILTER_KEYS:
                raise BadRequest(f"invalid filter '{key}'")
        self.filters = filters

    def _exact(self, key: str, *candidates: str) -> bool:
        values = self.filters.get(key)
        return values is None or any(c in values for c in candidates if c)

    def _fuzzy(self, key: str, *candidates: str) -> bool:
        """A value matches a candidate equal to it or starting with it (ID prefixes)."""
        values = self.filters.get(key)
        if values is None:
            return True
        return any(c.startswith(v) for v in values for c in candidates if c)

    def _named(self, key: str, event: Event) -> bool:
        return self._fuzzy(key, event.actor_id, event.attributes.get("name", ""))

    def _action(self, event: Event) -> bool:
        values = self.filters.get("event")
        if values is None:
            return True
        if event.action in values:
            return True
        bare = event.action.split(":", 1)[0]
        return bare in _PREFIX_ACTIONS and bare in values

    def _image(self, event: Event) -> bool:
        name = event.attributes.get("name" if event.type == "image" else "image", "")
        return self._exact(
            "image", event.actor_id, name, _strip_tag(event.actor_id), _strip_tag(name)
        )

    def _labels(self, attributes: dict[str, str]) -> bool:
        for item in self.filters.get("label", []):
            key, sep, value = item.partition("=")
            if key not in attributes or (sep and attributes[key] != value):
                return False
        return True

    def matches(self, event: Event) -> bool:
        return (
            self._action(event)
            and self._exact("type", event.type)
            and self._exact("scope", event.scope)
            and all(
                self._named(key, event)
                for key in (
                    "daemon",
                    "container",
                    "plugin",
                    "volume",
                    "network",
                    "node",
                    "service",
                    "secret",
                    "config",
                )
            )
            and self._image(event)
            and self._labels(event.attributes)
        )


# --- the bus ---------------------------------------------------------------------------------


class Subscription:
    """One listener's queue of live events (those after its subscription)."""

    def __init__(self, bus: EventBus, event_filter: EventFilter) -> None:
        self._bus = bus
        self.filter = event_filter
        self._queue: collections.deque[Event] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self.closed = False  # unsubscribed, or cut off for falling behind

    def _offer(self, event: Event) -> bool:
        """Queue an event (called by the bus); False when this listener must be dropped."""
        if not self.filter.matches(event):
            return True
        with self._ready:
            if len(self._queue) >= SUBSCRIBER_QUEUE:
                self.closed = True
                self._ready.notify_all()
                return False
            self._queue.append(event)
            self._ready.notify()
        return True

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after ``timeout`` seconds or once closed."""
        with self._ready:
            if not self._queue and not self.closed:
                self._ready.wait(timeout)
            return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        self._bus._unsubscribe(self)
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, backlog: int = BACKLOG) -> None:
        self._lock = threading.Lock()
        self._backlog: collections.deque[Event] = collections.deque(maxlen=backlog)
        self._subscribers: list[Subscription] = []
        self._last_nano = 0

    def emit(
        self,
        type: str,
        action: str,
        actor_id: str,
        attributes: dict[str, str] | None = None,
    ) -> Event:
        """Publish a new event stamped now (times strictly increase, so they order events)."""
        clean = {str(k): str(v) for k, v in (attributes or {}).items()}
        with self._lock:
            stamp = max(time.time_ns(), self._last_nano + 1)
            self._last_nano = stamp
            event = Event(type, action, actor_id, clean, stamp)
            self._backlog.append(event)
            dropped = [s for s in self._subscribers if not s._offer(event)]
            for subscription in dropped:
                self._subscribers.remove(subscription)
        for _subscription in dropped:
            log.warning("an event listener fell %d events behind; disconnected", SUBSCRIBER_QUEUE)
        return event

    def subscribe(
        self,
        event_filter: EventFilter | None = None,
        since_nano: int | None = None,
        until_nano: int | None = None,
    ) -> tuple[list[Event], Subscription]:
        """The backlog's matching events in [since, until] (none without ``since``) and a
        subscription to what follows, taken atomically: nothing is missed or told twice."""
        event_filter = event_filter or EventFilter()
        subscription = Subscription(self, event_filter)
        with self._lock:
            replay = []
            if since_nano is not None:
                replay = [
                    e
                    for e in self._backlog
                    if e.time_nano >= since_nano
                    and (until_nano is None or e.time_nano <= until_nano)
                    and event_filter.matches(e)
                ]
            self._subscribers.append(subscription)
        return replay, subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def listeners(self) -> int:
        with self._lock:
            return len(self._subscribers)


BUS = EventBus()


def publish(
    type: str, action: str, actor_id: str, attributes: dict[str, str] | None = None
) -> Event:
    """Publish an event on the engine's bus (image, build and network code call this)."""
    return BUS.emit(type, action, actor_id, attributes)


# --- adapters for the engine's components -----------------------------------------------------


def _on_bridge(container: Container) -> bool:
    mode = str(container.host_config.get("NetworkMode") or "default")
    return mode in ("default", "bridge") and bool((container.network or {}).get("IPAddress"))


def container_event(action: str, container: Container, extra: dict[str, str]) -> None:
    """The ContainerManager's ``on_event``: the container's event, plus the volume mounts and
    the bridge connection that a start or an exit implies, as dockerd reports them."""
    attributes = {str(k): str(v) for k, v in (container.config.get("Labels") or {}).items()}
    attributes.update(image=container.image_name, name=container.name)
    attributes.update(extra)
    if action == "start":
        _network_event("connect", container)
        for mount in container.mounts:
            if mount.get("Type") == "volume":
                publish(
                    "volume",
                    "mount",
                    str(mount.get("Name", "")),
                    {
                        "container": container.id,
                        "destination": str(mount.get("Destination", "")),
                        "driver": str(mount.get("Driver") or "local"),
                        "propagation": str(mount.get("Propagation", "")),
                        "read/write": "true" if mount.get("RW", True) else "false",
                    },
                )
    publish("container", action, container.id, attributes)
    if action == "die":
        for mount in container.mounts:
            if mount.get("Type") == "volume":
                publish(
                    "volume",
                    "unmount",
                    str(mount.get("Name", "")),
                    {"container": container.id, "driver": str(mount.get("Driver") or "local")},
                )
        _network_event("disconnect", container)


def _network_event(action: str, container: Container) -> None:
    if _on_bridge(container):
        publish(
            "network",
            action,
            network_id("bridge"),
            {"container": container.id, "name": "bridge", "type": "bridge"},
        )


def volume_event(action: str, volume: Volume) -> None:
    """The VolumeStore's ``on_event`` (create, destroy)."""
    attributes = {"driver": "local"}
    publish("volume", action, volume.name, attributes)
