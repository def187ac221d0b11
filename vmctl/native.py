"""`vmctl engine serve`: the agent natively on a Linux host, without a VM.

The same engine the VM runs, for a Linux user who wants the same CLI everywhere (and for
the tests). It needs root (namespaces, mounts, cgroups). The busybox image it preloads
is built from the host's busybox-static, as the VM image builder builds it; the agent then
runs in the foreground (Ctrl-C stops it; its containers keep running and are found again
by the next `engine serve`). It execs the agent, so signals reach it directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vmctl.atomic import write_atomic
from vmctl.errors import VmctlError

DEFAULT_SOCKET = "/run/vmctl/engine.sock"
DEFAULT_ROOT = "/var/lib/vmctl"
DEFAULT_RUN_ROOT = "/run/vmctl"
HOST_BUSYBOX = Path("/bin/busybox")
PRELOAD_NAME = "busybox.tar"
PRELOAD_EPOCH = 1700000000  # fixed, so the same busybox always makes the same image


def check_host() -> None:
    if not sys.platform.startswith("linux"):
        raise VmctlError(
            "the engine runs natively only on Linux",
            hint="use `vmctl machine start` to run it in a VM",
        )
    if os.geteuid() != 0:
        raise VmctlError(
            "`vmctl engine serve` needs root (namespaces, mounts and cgroups)",
            hint="run it with sudo, or use `vmctl machine start` for a VM",
        )


def preload_archive(root: Path) -> Path | None:
    """The busybox image archive built from the host's busybox-static, cached under root."""
    from images import busybox as bb  # the image builder's code: only `engine serve` needs it

    target = root / "preload" / PRELOAD_NAME
    if not HOST_BUSYBOX.exists():
        return target if target.exists() else None
    data = HOST_BUSYBOX.read_bytes()
    stamp = target.with_suffix(".source")
    fingerprint = f"{len(data)} {HOST_BUSYBOX.stat().st_mtime_ns}"
    if target.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmctl-busybox-") as scratch:
        applets = bb.applet_paths(data, Path(scratch))
    version = _busybox_version()
    image = bb.build_container_image(data, applets, version, PRELOAD_EPOCH)
    write_atomic(target, image.tarball)
    stamp.write_text(fingerprint)
    return target


def _busybox_version() -> str:
    try:
        out = subprocess.run(
            [str(HOST_BUSYBOX)], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return "host"
    first = out.splitlines()[0] if out else ""
    return first.split()[1] if first.startswith("BusyBox") and len(first.split()) > 1 else "host"


def agent_argv(
    socket: str, root: str, run_root: str, preload: Path | None, log_level: str
) -> list[str]:
    argv = [sys.executable, "-m", "agent", "--socket", socket, "--root", root]
    argv += ["--run-root", run_root, "--log-level", log_level]
    if preload is not None:
        argv += ["--preload", str(preload)]
    return argv


def serve(socket: str, root: str, run_root: str, log_level: str) -> int:
    """Become the agent, in the foreground (returns only by raising)."""
    check_host()
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            print(
                f"warning: {tool} is not installed: containers get --network none only",
                file=sys.stderr,
            )
            break
    root_path = Path(root)
    root_path.mkdir(parents=True, exist_ok=True, mode=0o711)
    Path(socket).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    preload = preload_archive(root_path)
    if preload is None:
        print(
            f"warning: no busybox image to preload ({HOST_BUSYBOX} is missing: "
            "install busybox-static)",
            file=sys.stderr,
        )
    print(f"engine: serving on {socket}; point docker at it with:", file=sys.stderr)
    print(f"  export DOCKER_HOST=unix://{socket}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # The agent takes this process's place: SIGINT/SIGTERM reach it directly.
    argv = agent_argv(socket, root, run_root, preload, log_level)
    os.execv(argv[0], argv)
