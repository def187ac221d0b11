"""paramiko, imported without invoke.

paramiko's ssh-config module imports invoke (~0.1 s of CPU, a YAML parser included) only
to run `Match exec` lines of OpenSSH config files, and vmctl never reads one. The host
agent imports paramiko while its VM boots beside it, on the same CPUs.
"""

import sys

sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]  # import invoke -> ImportError

import paramiko  # noqa: E402
from paramiko.ssh_exception import IncompatiblePeer  # noqa: E402

__all__ = ["IncompatiblePeer", "paramiko"]
