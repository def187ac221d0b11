"""Spare upstreams: opened ahead, handed out once, stale ones dropped, all closed at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from vmctl import spares
from vmctl.spares import SpareUpstreams


class Fake:
    def __init__(self, serial: int) -> None:
        self.serial = serial
        self.stale = False
        self.closed = False


class Opener:
    """Numbered fakes; ``fail`` makes opens raise until it is cleared."""

    def __init__(self) -> None:
        self.count = 0
        self.fail = False
        self.lock = threading.Lock()
        self.made: list[Fake] = []

    def __call__(self) -> Fake:
        with self.lock:
            if self.fail:
                raise OSError("engine down")
            self.count += 1
            fake = Fake(self.count)
            self.made.append(fake)
            return fake


def pool(opener: Opener, count: int = 2) -> SpareUpstreams[Fake]:
    def close(fake: Fake) -> None:
        fake.closed = True

    return SpareUpstreams(opener, lambda fake: not fake.stale, close, count)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_spares_are_opened_ahead_and_replaced_once_taken() -> None:
    opener = Opener()
    upstreams = pool(opener)
    upstreams.start()
    try:
        wait_for(lambda: upstreams.ready() == 2)
        first = upstreams.get()
        assert first.serial == 1  # the oldest spare, not a fresh open
        wait_for(lambda: upstreams.ready() == 2)
        assert opener.count == 3  # one replacement, no more
        assert upstreams.get().serial == 2
    finally:
        upstreams.close()


def test_stale_spares_are_closed_and_skipped() -> None:
    opener = Opener()
    upstreams = pool(opener)
    upstreams.start()
    try:
        wait_for(lambda: upstreams.ready() == 2)
        opener.made[0].stale = True  # e.g. the engine restarted: its end was seen
        taken = upstreams.get()
        assert taken.serial == 2
        assert opener.made[0].closed
        wait_for(lambda: upstreams.ready() == 2)  # serials 3 and 4
        for fake in opener.made[2:]:
            fake.stale = True
        fresh = upstreams.get()  # every spare stale: a fresh open
        assert not fresh.stale and fresh.serial > 4
    finally:
        upstreams.close()


def test_failed_opens_back_off_and_get_still_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spares, "RETRY_FIRST", 0.01)
    opener = Opener()
    opener.fail = True
    upstreams = pool(opener)
    upstreams.start()
    try:
        with pytest.raises(OSError, match="engine down"):
            upstreams.get()  # nothing ready: the caller sees the open's own error
        opener.fail = False
        wait_for(lambda: upstreams.ready() == 2)
        assert upstreams.get().serial == 1
    finally:
        upstreams.close()


def test_close_releases_every_spare_and_stops_filling() -> None:
    opener = Opener()
    upstreams = pool(opener, count=3)
    upstreams.start()
    wait_for(lambda: upstreams.ready() == 3)
    upstreams.close()
    assert all(fake.closed for fake in opener.made)
    assert upstreams.ready() == 0
    opened = opener.count
    time.sleep(0.05)
    assert opener.count == opened


def test_a_burst_is_refilled_by_opens_side_by_side() -> None:
    opener = Opener()
    gate = threading.Event()
    in_flight, most = 0, 0
    lock = threading.Lock()

    def slow_open() -> Fake:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        gate.wait(5)
        with lock:
            in_flight -= 1
        return opener()

    upstreams = SpareUpstreams(slow_open, lambda fake: not fake.stale, lambda fake: None, 3)
    upstreams.start()
    try:
        wait_for(lambda: most == 3)  # all three spares opening at once, not one by one
        gate.set()
        wait_for(lambda: upstreams.ready() == 3)
    finally:
        gate.set()
        upstreams.close()


def test_fills_use_their_own_opener_and_clients_the_other() -> None:
    spare_opener, client_opener = Opener(), Opener()
    spare_opener.fail = True  # e.g. SSH is down: fillers do not reconnect, clients do
    upstreams = SpareUpstreams(
        client_opener, lambda fake: not fake.stale, lambda fake: None, 2,
        open_spare=spare_opener,
    )  # fmt: skip
    upstreams.start()
    try:
        assert upstreams.get() is client_opener.made[0]
        assert spare_opener.count == 0 and upstreams.ready() == 0
    finally:
        upstreams.close()


def test_an_offered_upstream_is_handed_out_first_and_counts_as_a_spare() -> None:
    opener = Opener()
    upstreams = pool(opener, count=2)
    offered = Fake(0)
    upstreams.offer(offered)
    upstreams.start()
    try:
        wait_for(lambda: upstreams.ready() == 2)
        assert opener.count == 1  # only one more was opened
        assert upstreams.get() is offered
    finally:
        upstreams.close()


def test_an_offer_beyond_the_count_or_after_close_is_released() -> None:
    opener = Opener()
    upstreams = pool(opener, count=1)
    first, second = Fake(0), Fake(-1)
    upstreams.offer(first)
    upstreams.offer(second)
    assert second.closed and not first.closed
    upstreams.close()
    late = Fake(-2)
    upstreams.offer(late)
    assert late.closed and first.closed
