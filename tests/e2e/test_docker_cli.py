"""The docker CLI and SDK through the VM: the same suite as natively, via the machine's
engine socket on the host (what `eval "$(vmctl machine env)"` points docker at)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker_suite import ContainerSuite, DockerCLI, SdkImagesSuite, ToolsSuite
from tests.e2e.conftest import VM

pytestmark = pytest.mark.e2e


@pytest.fixture
def dk(running_vm: VM) -> Iterator[DockerCLI]:
    env = running_vm.vmctl("machine", "env", "--shell", "bash").stdout
    host = next(line for line in env.splitlines() if "DOCKER_HOST=" in line)
    assert str(running_vm.socket) in host  # the line a user evals names this socket
    cli = DockerCLI(running_vm.socket, running_vm.env)
    yield cli
    cli.cleanup()


class TestContainers(ContainerSuite):
    pass


class TestSdk(SdkImagesSuite):
    pass


class TestTools(ToolsSuite):
    pass
