"""The docker CLI and SDK against the agent running natively on this host (root)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.docker_suite import ContainerSuite, DockerCLI, SdkImagesSuite, ToolsSuite
from tests.runtime.conftest import NativeAgent

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)


@pytest.fixture
def dk(agent: NativeAgent) -> Iterator[DockerCLI]:
    cli = DockerCLI(agent.socket, {**os.environ, "DOCKER_CONFIG": agent.env["VMCTL_HOME"]})
    yield cli
    cli.cleanup()


class TestContainers(ContainerSuite):
    pass


class TestSdk(SdkImagesSuite):
    pass


class TestTools(ToolsSuite):
    pass
