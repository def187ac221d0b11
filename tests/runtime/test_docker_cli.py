"""The docker CLI and SDK against the agent running natively on this host (root)."""

from __future__ import annotations

import os

import pytest

from tests.docker_suite import ContainerSuite, SdkImagesSuite, ToolsSuite

pytestmark = pytest.mark.runtime

if os.geteuid() != 0:
    pytest.skip("running containers needs root", allow_module_level=True)


class TestContainers(ContainerSuite):
    pass


class TestSdk(SdkImagesSuite):
    pass


class TestTools(ToolsSuite):
    pass
