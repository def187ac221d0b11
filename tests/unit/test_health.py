"""Health check configs: validation, the probe they give, merging with the image's."""

from __future__ import annotations

import pytest

from agent.containers import health
from agent.containers.model import Container, State
from agent.errors import BadRequest

S = health.SECOND


def test_probe_of_cmd_and_cmd_shell_with_defaults() -> None:
    probe = health.probe_of({"Healthcheck": {"Test": ["CMD", "curl", "-f", "x"]}})
    assert probe is not None
    assert probe.argv == ["curl", "-f", "x"]
    assert (probe.interval, probe.timeout, probe.start_period) == (30.0, 30.0, 0.0)
    assert (probe.start_interval, probe.retries) == (5.0, 3)
    shell = health.probe_of(
        {
            "Shell": ["/bin/bash", "-c"],
            "Healthcheck": {"Test": ["CMD-SHELL", "exit 1"], "Interval": S, "Retries": 2},
        }
    )
    assert shell is not None and shell.argv == ["/bin/bash", "-c", "exit 1"]
    assert (shell.interval, shell.retries) == (1.0, 2)


@pytest.mark.parametrize(
    "config", [{}, {"Healthcheck": None}, {"Healthcheck": {"Test": ["NONE"]}}, {"Healthcheck": {}}]
)
def test_no_probe(config: dict[str, object]) -> None:
    assert health.probe_of(config) is None


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"Test": ["CMD", "true"], "Interval": 10}, "Interval in Healthcheck cannot be less"),
        ({"Test": ["CMD", "true"], "Retries": -1}, "Retries in Healthcheck cannot be negative"),
        ({"Test": ["SOMETIMES", "true"]}, "unknown Healthcheck Test type"),
        ({"Test": "true"}, "Test must be a list of strings"),
        ({"Test": ["CMD"]}, "CMD needs a command"),
        ({"Timeout": "5s"}, "Timeout must be a duration"),
        ("yes", "must be an object"),
    ],
)
def test_validate_refuses(check: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        health.validate(check)


def test_validate_accepts() -> None:
    health.validate(None)
    health.validate({"Test": ["NONE"]})
    health.validate({"Test": ["CMD-SHELL", "true"], "Interval": S, "StartInterval": S // 2})


def test_merge_takes_the_images_values_for_what_is_left_zero() -> None:
    image = {"Test": ["CMD", "true"], "Interval": 5 * S, "Retries": 2}
    assert health.merge_healthcheck(None, image) == image
    assert health.merge_healthcheck({"Retries": 7}, image) == {**image, "Retries": 7}
    assert health.merge_healthcheck({"Test": ["NONE"]}, image)["Test"] == ["NONE"]
    assert health.merge_healthcheck({"Test": ["CMD", "x"]}, None) == {"Test": ["CMD", "x"]}
    assert health.merge_healthcheck(None, None) is None


def test_status_words() -> None:
    container = Container("c" * 64, "n", "", "sha256:x", "busybox", {}, {}, "/nowhere")
    assert health.status_of(container) == "none"
    assert health.status_suffix(container) == ""
    container.state = State(health={"Status": "starting", "FailingStreak": 0, "Log": []})
    assert health.status_suffix(container) == " (health: starting)"
    container.state.health = {"Status": "unhealthy"}
    assert (health.status_of(container), health.status_suffix(container)) == (
        "unhealthy",
        " (unhealthy)",
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "500ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (0.0000015, "1.5µs"),
    ],
)
def test_durations_print_as_go_does(seconds: float, text: str) -> None:
    assert health._go(seconds) == text
