#!/usr/bin/env python3
"""Container start latency: `true` in busybox with our runtime, against crun and runc.

One iteration of ours is what `docker run --rm --network none busybox true` asks of the
runtime: ContainerManager create + start + wait + remove, called in this process (the
daemon is already running in the product, so no interpreter start is counted). The
anchors run the same busybox content as a plain OCI bundle (`crun spec` defaults, args
`true`): `crun run` and `runc run`, each timed as a subprocess with a fresh container id.
The floor is `unshare -fmpiun --mount-proc true`. Rounds interleave the four, rotating
their order, so host noise falls on all of them alike.

Two regimes, because moving a process into a cgroup waits for an RCU grace period (several
ms) unless another move happened moments before: "idle", where each start follows a short
idle gap (a lone `docker run`), and "back to back", where each recorded start follows an
untimed start of the same subject (a loop of them, as hyperfine measures).

    python bench/run_latency.py [--runs 30] [--warmup 3] [--gap 0.05] [--profile N]
        [--record]

Needs root, /bin/busybox (busybox-static) and the crun and runc packages. crun refuses a
hybrid v1/v2 cgroup host, so it runs from one long-lived helper started with `unshare -m`
that unmounts the cgroup2 mount in its private mount namespace (the host's stays) and
times each `crun run` itself; the figure is `crun run` alone, as for runc.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.containers.manager import ContainerManager  # noqa: E402
from agent.images.archive import load_archive  # noqa: E402
from agent.images.store import ImageStore  # noqa: E402
from agent.runtime import cgroups  # noqa: E402
from agent.volumes.store import VolumeStore  # noqa: E402
from bench.results import report  # noqa: E402
from images import busybox as bb  # noqa: E402

HOST_BUSYBOX = Path("/bin/busybox")
PHASES = ("create", "start", "wait", "remove")
CREATE_BODY = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}

# Runs inside `unshare -m`: drop the cgroup2 mount crun refuses, then time one `crun run`
# per id read from stdin and answer one JSON line each.
CRUN_HELPER = """
import json, subprocess, sys, time
unified, state, bundle = sys.argv[1:4]
if unified:
    subprocess.run(["umount", unified], check=True)
print("ready", flush=True)
for line in sys.stdin:
    cid = line.strip()
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["crun", "--root", state, "run", "--bundle", bundle, cid],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "rc": proc.returncode,
                      "err": proc.stderr.decode(errors="replace")[-500:]}), flush=True)
"""


class Ours:
    """A ContainerManager in a throw-away root with the busybox image built from the host's."""

    def __init__(self, root: Path, run_root: Path) -> None:
        data = HOST_BUSYBOX.read_bytes()
        applets = bb.applet_paths(data, root / "applets")
        tarball = bb.build_container_image(data, applets, "host", 1700000000).tarball
        self.root = root
        self.images = ImageStore(root / "images")
        load_archive(self.images, io.BytesIO(tarball))
        self.cgroup_parent = f"vmctl-bench-{secrets.token_hex(4)}"
        mount = cgroups.find_unified_mount()
        self.hierarchy = cgroups.Hierarchy(mount, self.cgroup_parent) if mount else None
        self.manager = ContainerManager(
            str(root),
            self.images,
            VolumeStore(str(root / "volumes")),
            self.hierarchy,
            None,
            run_root=str(run_root),  # short: socket paths are capped at 107 bytes
        )

    def layer_dirs(self) -> list[Path]:
        return list(self.images.get("busybox").layer_dirs)

    def once(self) -> dict[str, float]:
        """One docker-run-rm of `true`; the seconds each phase took."""
        stamps = [time.perf_counter()]
        container = self.manager.create(dict(CREATE_BODY))
        stamps.append(time.perf_counter())
        self.manager.start(container.id)
        stamps.append(time.perf_counter())
        code = self.manager.wait(container.id, timeout=60)
        stamps.append(time.perf_counter())
        self.manager.remove(container.id, force=True, volumes=True)
        stamps.append(time.perf_counter())
        if code != 0:
            raise SystemExit(f"our runtime: `true` exited with {code}")
        phases = {p: stamps[i + 1] - stamps[i] for i, p in enumerate(PHASES)}
        phases["total"] = stamps[-1] - stamps[0]
        return phases

    def close(self) -> None:
        for container in self.manager.all():
            self.manager.remove(container.id, force=True, volumes=True)
        if self.hierarchy is not None:
            parent = Path(self.hierarchy.root) / self.cgroup_parent
            if parent.exists():
                for child in parent.iterdir():
                    if child.is_dir():
                        child.rmdir()
                parent.rmdir()


def make_bundle(bundle: Path, layers: list[Path]) -> None:
    """An OCI bundle of the image's own layer content with `crun spec`'s defaults."""
    rootfs = bundle / "rootfs"
    for layer in layers:  # lowest first; the busybox image has one layer and no whiteouts
        shutil.copytree(layer, rootfs, symlinks=True, dirs_exist_ok=True)
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = ["true"]
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config, indent=2))


class Crun:
    """The helper that times `crun run` inside its own mount namespace."""

    def __init__(self, state: Path, bundle: Path) -> None:
        unified = cgroups.find_unified_mount()
        self.state = state
        self.proc = subprocess.Popen(
            ["unshare", "-m", sys.executable, "-c", CRUN_HELPER]
            + [str(unified or ""), str(state), str(bundle)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the crun helper failed to start (see its error above)")

    def once(self, cid: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cid + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if answer["rc"] != 0:
            raise SystemExit(f"crun run {cid} exited with {answer['rc']}:\n{answer['err']}")
        return float(answer["seconds"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr.decode()}")
    return seconds


def delete_leftovers(runtime: str, state: Path, prefix: str) -> None:
    """Force-delete any container a failed run left in our private state root."""
    if not state.exists():
        return
    wrapper: list[str] = []
    unified = cgroups.find_unified_mount()
    if runtime == "crun" and unified is not None:  # crun needs the helper's view here too
        wrapper = ["unshare", "-m", "sh", "-c", 'umount "$0" && exec "$@"', str(unified)]
    for entry in state.iterdir():
        if entry.name.startswith(prefix):
            subprocess.run(
                [*wrapper, runtime, "--root", str(state), "delete", "--force", entry.name],
                capture_output=True,
            )


def stray_cgroups(prefix: str) -> list[Path]:
    """v1 cgroups named after our anchor containers (crun and runc remove them on exit)."""
    base = Path("/sys/fs/cgroup")
    return [p for p in base.glob(f"*/{prefix}*") if p.is_dir()] + [
        p for p in base.glob(f"*/*/{prefix}*") if p.is_dir()
    ]


# Daemon-side steps timed by --profile (module, attribute path, label). The init's own work
# (forks, namespaces, mounts, exec) is what remains of launch.start besides the cgroup move.
SPLIT = (
    ("agent.containers.model", "Container.save", "record saves (JSON; fsync'd when durable)"),
    ("agent.containers.rootfs", "mount_overlay", "overlay mount"),
    ("agent.containers.prepare", "Preparer.spec", "spec (user lookup, rootfs prep)"),
    ("agent.runtime.cgroups", "Hierarchy.create", "cgroup mkdir"),
    ("agent.runtime.devices", "FilterCache.attach", "device filter attach"),
    ("agent.containers.prepare", "Preparer.write_etc_files", "hostname/hosts/resolv"),
    ("agent.runtime.launch", "start", "launch: shim + init up to exec"),
    ("agent.runtime.cgroups", "Cgroup.add_process", "launch, of which: move init into cgroup"),
    ("agent.runtime.cgroups", "Cgroup.remove", "cgroup rmdir"),
    ("agent.containers.rootfs", "unmount", "overlay unmounts"),
    ("agent.containers.manager", "ContainerManager._remove_files", "remove container dir"),
)


def profile(ours: Ours, runs: int, gap: float) -> list[tuple[str, float]]:
    """Median milliseconds per iteration spent in each SPLIT step, over ``runs`` iterations.

    The steps are wrapped only for these extra iterations, never for the timed ones.
    """
    spent: dict[str, float] = {}
    restore: list[tuple[object, str, object]] = []
    for module_name, path, label in SPLIT:
        owner: object = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = getattr(owner, name)
        restore.append((owner, name, original))
        setattr(owner, name, _timed_call(original, label, spent))
    per_run: dict[str, list[float]] = {label: [] for _, _, label in SPLIT}
    totals: list[float] = []
    try:
        for _ in range(runs):
            spent.clear()
            time.sleep(gap)
            totals.append(ours.once()["total"])
            for label in per_run:
                per_run[label].append(spent.get(label, 0.0))
    finally:
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)
    rows = [(label, statistics.median(values)) for label, values in per_run.items()]
    return [("total (wrapped)", statistics.median(totals)), *rows]


def _timed_call(
    original: Callable[..., object], label: str, spent: dict[str, float]
) -> Callable[..., object]:
    def wrapper(*args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

    return wrapper


def missing_tools() -> list[str]:
    return [tool for tool in ("crun", "runc", "unshare") if shutil.which(tool) is None]


def fmt_ms(values: list[float]) -> str:
    return ", ".join(f"{v * 1000:.1f}" for v in values)


@dataclass
class Regime:
    """One way of pacing the starts, and what each subject measured under it."""

    title: str
    gap: float  # idle seconds before each recorded start
    repeat: bool  # run each subject once untimed right before its recorded start
    times: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, list[float]] = field(default_factory=dict)  # ours, by API call

    def measure(self, subjects: list[tuple[str, Subject]], runs: int) -> None:
        """Interleaved rounds, the order rotating each round."""
        self.times = {name: [] for name, _ in subjects}
        self.calls = {p: [] for p in PHASES}
        for i in range(runs):
            shift = i % len(subjects)
            for name, fn in subjects[shift:] + subjects[:shift]:
                if self.repeat:
                    fn()
                time.sleep(self.gap)
                seconds, calls = fn()
                self.times[name].append(seconds)
                for phase, value in calls.items():
                    self.calls[phase].append(value)

    def block(self) -> list[str]:
        med = {name: statistics.median(values) for name, values in self.times.items()}
        ratios = [o / c for o, c in zip(self.times["ours"], self.times["crun"], strict=True)]
        calls = ", ".join(f"{p} {statistics.median(self.calls[p]) * 1000:.1f}" for p in PHASES)
        return [
            f"{self.title}:",
            "",
            "| measure | median | all runs (ms) |",
            "| --- | --- | --- |",
            *(
                f"| {label} | {med[key] * 1000:.1f} ms | {fmt_ms(self.times[key])} |"
                for key, label in LABELS.items()
            ),
            f"| ratio ours / crun | {med['ours'] / med['crun']:.2f}× | target ≤ 2×; "
            f"within each round, median {statistics.median(ratios):.2f}× |",
            f"| ratio ours / runc | {med['ours'] / med['runc']:.2f}× | |",
            "",
            f"Ours by API call, medians (ms): {calls}.",
            "",
        ]


Subject = Callable[[], tuple[float, dict[str, float]]]
LABELS = {
    "ours": "ours in-process: create + start + wait + remove",
    "crun": "`crun run` (timed inside the `unshare -m` helper)",
    "runc": "`runc run`",
    "floor": "floor: `unshare -fmpiun --mount-proc true`",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="recorded starts of each, per regime")
    parser.add_argument("--warmup", type=int, default=3, help="untimed starts of each first")
    parser.add_argument(
        "--gap", type=float, default=0.05, help="idle seconds before each start in the idle regime"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then time our daemon-side steps over N more iterations",
    )
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    if os.geteuid() != 0:
        raise SystemExit("run_latency.py starts containers: run it as root")
    if not HOST_BUSYBOX.exists():
        raise SystemExit("/bin/busybox is missing: apt-get install busybox-static")
    missing = missing_tools()
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: the anchors need them; "
            "apt-get install crun runc (unshare is in util-linux)"
        )

    tmp = Path(tempfile.mkdtemp(prefix="vmctl-lat-", dir="/var/tmp"))
    prefix = f"vmctl-lat-{os.getpid()}-"
    crun_state, runc_state, bundle = tmp / "crun-state", tmp / "runc-state", tmp / "bundle"
    ours: Ours | None = None
    crun: Crun | None = None
    counter = iter(range(1 << 30))
    regimes = [
        Regime(f"Idle host: {args.gap * 1000:.0f} ms idle before each start", args.gap, False),
        Regime("Back to back: each start right after an untimed start of the same", 0.0, True),
    ]
    split_rows: list[tuple[str, float]] = []
    try:
        ours = Ours(tmp / "engine", tmp / "run")
        bundle.mkdir()
        make_bundle(bundle, ours.layer_dirs())
        crun = Crun(crun_state, bundle)
        runc = ["runc", "--root", str(runc_state), "run", "--bundle", str(bundle)]
        floor = ["unshare", "-fmpiun", "--mount-proc", "true"]

        def run_ours() -> tuple[float, dict[str, float]]:
            assert ours is not None
            calls = ours.once()
            return calls.pop("total"), calls

        def run_crun() -> tuple[float, dict[str, float]]:
            assert crun is not None
            return crun.once(f"{prefix}{next(counter)}"), {}

        subjects: list[tuple[str, Subject]] = [
            ("ours", run_ours),
            ("crun", run_crun),
            ("runc", lambda: (timed([*runc, f"{prefix}{next(counter)}"]), {})),
            ("floor", lambda: (timed(floor), {})),
        ]
        print(f"warm-up: {args.warmup} of each…", file=sys.stderr)
        for _ in range(args.warmup):
            for _, fn in subjects:
                fn()
        for regime in regimes:
            print(f"{regime.title}: {args.runs} interleaved rounds…", file=sys.stderr)
            regime.measure(subjects, args.runs)
        if args.profile:
            print(f"profiling {args.profile} more iterations of ours…", file=sys.stderr)
            split_rows = profile(ours, args.profile, args.gap)
    finally:
        if crun is not None:
            crun.close()
        delete_leftovers("crun", crun_state, prefix)
        delete_leftovers("runc", runc_state, prefix)
        if ours is not None:
            ours.close()
        with open("/proc/self/mountinfo") as handle:
            mounts = [line.split()[4] for line in handle if line.split()[4].startswith(str(tmp))]
        for mount in reversed(mounts):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        for stray in stray_cgroups(prefix):
            with contextlib.suppress(OSError):
                stray.rmdir()

    lines = [
        f"### Start latency ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} cores, kernel {platform.release()}, {args.runs} runs of each "
        f"per regime, {args.warmup} warm-up)",
        "",
    ]
    for regime in regimes:
        lines += regime.block()
    if split_rows:
        lines += [
            f"Our daemon-side steps, idle regime, median ms per iteration over {args.profile} "
            "further iterations with the steps wrapped in timers:",
            "",
            "| step | ms |",
            "| --- | --- |",
            *(f"| {label} | {seconds * 1000:.2f} |" for label, seconds in split_rows),
            "",
        ]
    text = "\n".join(lines)
    report(text, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
