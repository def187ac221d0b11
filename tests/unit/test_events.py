"""The engine's event bus, its filters and the filters query parameter."""

from __future__ import annotations

import threading

import pytest

from agent import events
from agent.api.filter_args import bool_filter, match_labels, parse_filters
from agent.containers.model import Container
from agent.errors import BadRequest
from agent.events import Event, EventBus, EventFilter
from agent.network.ids import network_id


def container_event(action: str, name: str = "web", **attributes: str) -> Event:
    return Event("container", action, "c0ffee" + "0" * 58, {"name": name, **attributes}, 1)


# --- the bus --------------------------------------------------------------------------------


def test_times_strictly_increase_and_the_backlog_is_bounded() -> None:
    bus = EventBus(backlog=3)
    stamps = [bus.emit("volume", "create", f"v{i}").time_nano for i in range(5)]
    assert stamps == sorted(set(stamps))
    replay, subscription = bus.subscribe(since_nano=0)
    subscription.close()
    assert [e.actor_id for e in replay] == ["v2", "v3", "v4"]


def test_replay_is_bounded_by_since_and_until_and_live_events_follow() -> None:
    bus = EventBus()
    stamps = [bus.emit("volume", "create", f"v{i}").time_nano for i in range(4)]
    replay, subscription = bus.subscribe(since_nano=stamps[1], until_nano=stamps[2])
    assert [e.actor_id for e in replay] == ["v1", "v2"]
    with subscription:
        assert subscription.get(0) is None
        bus.emit("volume", "destroy", "v9")
        live = subscription.get(1)
        assert live is not None and (live.action, live.actor_id) == ("destroy", "v9")
    assert bus.listeners() == 0


def test_no_since_means_live_events_only() -> None:
    bus = EventBus()
    bus.emit("volume", "create", "old")
    replay, subscription = bus.subscribe()
    assert replay == []
    subscription.close()


def test_a_waiting_reader_wakes_for_an_event() -> None:
    bus = EventBus()
    _, subscription = bus.subscribe()
    got: list[Event | None] = []
    reader = threading.Thread(target=lambda: got.append(subscription.get(10)))
    reader.start()
    bus.emit("container", "start", "x")
    reader.join(5)
    assert not reader.is_alive() and got[0] is not None and got[0].action == "start"
    subscription.close()


def test_a_subscriber_that_falls_behind_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "SUBSCRIBER_QUEUE", 3)
    bus = EventBus()
    _, slow = bus.subscribe()
    for i in range(5):
        bus.emit("volume", "create", f"v{i}")
    assert slow.closed and bus.listeners() == 0
    queued = [slow.get(0) for _ in range(3)]  # what was queued can still be read
    assert [e.actor_id for e in queued if e is not None] == ["v0", "v1", "v2"]
    assert slow.get(0) is None


def test_the_message_has_dockerds_shape() -> None:
    bus = EventBus()
    attributes: dict = {"image": "busybox", "exitCode": 3}  # values become strings
    event = bus.emit("container", "die", "abc", attributes)
    doc = event.to_json()
    assert doc["Type"] == "container" and doc["Action"] == "die" and doc["scope"] == "local"
    assert doc["Actor"] == {"ID": "abc", "Attributes": {"image": "busybox", "exitCode": "3"}}
    assert doc["time"] == doc["timeNano"] // 1_000_000_000
    assert (doc["status"], doc["id"], doc["from"]) == ("die", "abc", "busybox")
    volume = bus.emit("volume", "create", "v").to_json()
    assert "status" not in volume and volume["Actor"]["ID"] == "v"


# --- the filter -----------------------------------------------------------------------------


def test_type_and_event_filters() -> None:
    start = container_event("start")
    assert EventFilter({"type": ["container"]}).matches(start)
    assert not EventFilter({"type": ["image", "volume"]}).matches(start)
    assert EventFilter({"event": ["die", "start"]}).matches(start)
    assert not EventFilter({"event": ["sta"]}).matches(start)
    exec_create = container_event("exec_create: sh -c date")
    assert EventFilter({"event": ["exec_create"]}).matches(exec_create)
    assert EventFilter({"event": ["exec_create: sh -c date"]}).matches(exec_create)
    assert not EventFilter({"event": ["exec_start"]}).matches(exec_create)


def test_container_filter_takes_names_and_id_prefixes() -> None:
    start = container_event("start", name="web")
    assert EventFilter({"container": ["web"]}).matches(start)
    assert EventFilter({"container": ["c0ffee"]}).matches(start)
    assert EventFilter({"container": ["other", "web"]}).matches(start)
    assert not EventFilter({"container": ["db"]}).matches(start)
    # other objects' events do not name the container: they are filtered out
    volume = Event("volume", "mount", "data", {"container": start.actor_id}, 1)
    assert not EventFilter({"container": ["web"]}).matches(volume)
    assert EventFilter({"volume": ["data"]}).matches(volume)


def test_image_filter_matches_container_events_by_their_image() -> None:
    start = container_event("start", image="busybox:latest")
    assert EventFilter({"image": ["busybox"]}).matches(start)
    assert EventFilter({"image": ["busybox:latest"]}).matches(start)
    assert not EventFilter({"image": ["alpine"]}).matches(start)
    pulled = Event("image", "pull", "sha256:1", {"name": "localhost:5000/app:v1"}, 1)
    assert EventFilter({"image": ["localhost:5000/app"]}).matches(pulled)
    assert EventFilter({"image": ["sha256:1"]}).matches(pulled)


def test_label_filter_and_combinations() -> None:
    start = container_event("start", tier="web", team="a")
    assert EventFilter({"label": ["tier"]}).matches(start)
    assert EventFilter({"label": ["tier=web", "team=a"]}).matches(start)
    assert not EventFilter({"label": ["tier=db"]}).matches(start)
    assert not EventFilter({"type": ["container"], "event": ["die"]}).matches(start)


def test_unknown_filter_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="invalid filter 'colour'"):
        EventFilter({"colour": ["red"]})


# --- the engine's adapters ------------------------------------------------------------------


def test_container_start_and_exit_tell_the_bridge_and_volumes() -> None:
    container = Container(
        id="f" * 64,
        name="web",
        created="",
        image_id="sha256:1",
        image_name="busybox",
        config={"Labels": {"tier": "web"}},
        host_config={"NetworkMode": "default"},
        directory="/nonexistent",
        network={"IPAddress": "172.17.0.2"},
        mounts=[{"Type": "volume", "Name": "data", "Destination": "/data", "RW": False}],
    )
    _, subscription = events.BUS.subscribe(EventFilter())
    with subscription:
        events.container_event("start", container, {})
        events.container_event("die", container, {"exitCode": "0"})
        got = []
        while (event := subscription.get(0)) is not None:
            got.append(event)
    assert [(e.type, e.action) for e in got] == [
        ("network", "connect"),
        ("volume", "mount"),
        ("container", "start"),
        ("container", "die"),
        ("volume", "unmount"),
        ("network", "disconnect"),
    ]
    start = got[2]
    assert start.attributes == {"tier": "web", "image": "busybox", "name": "web"}
    assert got[3].attributes["exitCode"] == "0"
    assert got[0].actor_id == network_id("bridge")
    assert got[1].attributes["read/write"] == "false"


# --- the filters parameter ------------------------------------------------------------------


def test_both_filter_encodings() -> None:
    assert parse_filters('{"name": ["a", "b"]}') == {"name": ["a", "b"]}
    assert parse_filters('{"name": {"a": true, "b": false}}') == {"name": ["a"]}
    assert parse_filters("") == {} and parse_filters("null") == {}


@pytest.mark.parametrize(
    "text", ["{", "[1]", '{"name": "a"}', '{"name": [1]}', '{"name": {"a": "yes"}}']
)
def test_malformed_filters_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_filters(text)


def test_filter_keys_are_checked() -> None:
    with pytest.raises(BadRequest, match="invalid filter 'x'"):
        parse_filters('{"x": ["1"]}', ("name",))


def test_boolean_and_label_filters() -> None:
    assert bool_filter({}, "dangling") is None
    assert bool_filter({"dangling": ["1"]}, "dangling") is True
    assert bool_filter({"dangling": ["false"]}, "dangling") is False
    with pytest.raises(BadRequest):
        bool_filter({"dangling": ["maybe"]}, "dangling")
    with pytest.raises(BadRequest):
        bool_filter({"dangling": ["true", "false"]}, "dangling")
    assert match_labels({"a": "1"}, ["a", "a=1"])
    assert not match_labels({"a": "1"}, ["a=2"])
    assert not match_labels(None, ["a"])
