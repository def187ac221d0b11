"""The `vmctl` command line. Only this module prints errors (`error: …`, `hint: …`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmctl import __version__, docker_context, native
from vmctl.config import MachineConfig, Mount, parse_mount, parse_size_gib, parse_size_mib
from vmctl.console import tail_lines
from vmctl.errors import VmctlError
from vmctl.machine import Machine, MachineStatus, State, list_machines
from vmctl.paths import DEFAULT_MACHINE, Paths
from vmctl.verbs import VERBS

SHELLS = ("sh", "bash", "zsh", "fish", "powershell", "cmd")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- machine verbs ----------------------------------------------------------------------


def config_from_args(name: str, args: argparse.Namespace) -> MachineConfig:
    defaults = MachineConfig(name=name)
    if args.no_mount:
        mounts: tuple[Mount, ...] = ()
    elif args.mount:
        mounts = tuple(parse_mount(m) for m in args.mount)
    else:
        mounts = (Mount(path=str(Path.home()), writable=True),)
    return MachineConfig(
        name=name,
        cpus=args.cpus if args.cpus is not None else defaults.cpus,
        memory_mib=parse_size_mib(args.memory) if args.memory else defaults.memory_mib,
        disk_gib=parse_size_gib(args.disk) if args.disk else defaults.disk_gib,
        mounts=mounts,
        accel=args.accel or defaults.accel,
        ssh_port=args.ssh_port if args.ssh_port is not None else defaults.ssh_port,
        insecure_registries=tuple(args.insecure_registry or ()),
    )


def creation_options_given(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, k) not in (None, False, [])
        for k in ("cpus", "memory", "disk", "mount", "no_mount", "accel", "ssh_port")
        + ("insecure_registry",)
    )


def cmd_create(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    machine.create(config_from_args(args.name, args))
    progress(f"created machine {args.name!r} in {machine.files.dir}")
    return 0


def cmd_start(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    if not machine.exists():
        config = config_from_args(args.name, args)
        machine.check_host(config)  # a start that cannot work creates nothing
        machine.create(config)
        progress(f"created machine {args.name!r}")
    elif creation_options_given(args):
        raise VmctlError(
            f"machine {args.name!r} exists; options like --cpus only apply when it is created",
            hint=f"edit {machine.files.config} while it is stopped, or remove and recreate it",
        )
    status = machine.start(progress)
    announce_running(machine, status)
    return 0


def announce_running(machine: Machine, status: MachineStatus) -> None:
    seconds = status.agent.boot_seconds if status.agent else None
    took = f" in {seconds:.1f} s" if seconds else ""
    accel = status.agent.accel if status.agent else "?"
    progress(f"machine {machine.name!r} is running ({accel}){took}")
    context = docker_context.ensure_context(machine.name, machine.files.engine_socket)
    progress(f"engine: unix://{machine.files.engine_socket}")
    env_hint = "" if machine.name == DEFAULT_MACHINE else f" {machine.name}"
    progress(f'use it with: eval "$(vmctl machine env{env_hint})"')
    if context:
        progress(f"or: docker --context {context} …")


def cmd_stop(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    machine.require()
    machine.stop(progress)
    progress(f"machine {args.name!r} stopped")
    return 0


def cmd_restart(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    machine.require()
    if machine.status(check_engine=False).state != State.STOPPED:
        machine.stop(progress)
    announce_running(machine, machine.start(progress))
    return 0


def cmd_status(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    machine.config()  # a corrupt config is worth an error even for a running machine
    status = machine.status()
    if args.format == "json":
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    d = status.to_dict()
    print(f"{status.name}: {status.state.value}" + (f" ({status.detail})" if status.detail else ""))
    if status.state == State.RUNNING:
        engine = "answers" if status.engine_ok else f"NOT answering: {status.engine_error}"
        print(f"  accelerator: {d['accel']} ({d['accel_reason']})")
        if d["boot_seconds"]:
            print(f"  boot time:   {d['boot_seconds']:.1f} s")
        print(f"  ssh:         127.0.0.1:{d['ssh_port']}")
        print(f"  engine:      unix://{machine.files.engine_socket} ({engine})")
        print(f"  pids:        host agent {status.hostagent_pid}, qemu {status.qemu_pid}")
        if d["ports"]:
            print(f"  ports:       {', '.join(d['ports'])}")
    for warning in d["warnings"]:
        print(f"  warning:     {warning}")
    return 0


def cmd_ls(paths: Paths, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in list_machines(paths):
        machine = Machine(paths, name)
        try:
            config = machine.config()
            status = machine.status(check_engine=False)
            rows.append(
                {
                    "name": name,
                    "state": status.state.value,
                    "cpus": config.cpus,
                    "memory_mib": config.memory_mib,
                    "disk_gib": config.disk_gib,
                    "accel": status.agent.accel if status.agent else "",
                    "engine": f"unix://{machine.files.engine_socket}",
                }
            )
        except VmctlError as e:
            rows.append({"name": name, "state": "broken", "error": e.message})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "STATE", "CPUS", "MEMORY", "DISK", "ACCEL", "ENGINE")
    table = [header] + [
        (
            r["name"],
            r["state"],
            str(r.get("cpus", "")),
            f"{r['memory_mib']}MiB" if "memory_mib" in r else "",
            f"{r['disk_gib']}GiB" if "disk_gib" in r else "",
            r.get("accel", ""),
            r.get("engine", r.get("error", "")),
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_rm(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    if not machine.exists() and machine.files.dir.exists() and args.force:
        shutil.rmtree(machine.files.dir)  # a half-broken directory: --force clears it
    else:
        machine.require()
        machine.remove(force=args.force)
    docker_context.remove_context(args.name)
    progress(f"removed machine {args.name!r}")
    return 0


def env_lines(socket: Path, shell: str, unset: bool, name: str) -> list[str]:
    host = f"unix://{socket}"
    context = docker_context.context_name(name)
    if shell == "fish":
        return (
            ["set -e DOCKER_HOST;"]
            if unset
            else [
                f"set -gx DOCKER_HOST {shlex.quote(host)};",
                f"# or: docker --context {context}",
            ]
        )
    if shell == "powershell":
        return (
            ["Remove-Item Env:\\DOCKER_HOST"]
            if unset
            else [
                f'$Env:DOCKER_HOST = "{host}"',
                f"# or: docker --context {context}",
            ]
        )
    if shell == "cmd":
        return ["SET DOCKER_HOST="] if unset else [f"SET DOCKER_HOST={host}"]
    return (
        ["unset DOCKER_HOST"]
        if unset
        else [
            f"export DOCKER_HOST={shlex.quote(host)}",
            f"# or: docker --context {context}",
            f'# Run this command to configure your shell: eval "$(vmctl machine env {name})"',
        ]
    )


def cmd_env(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    machine.config()
    shell = args.shell or guess_shell()
    for line in env_lines(machine.files.engine_socket, shell, args.unset, args.name):
        print(line)
    if not args.unset and machine.status(check_engine=False).state != State.RUNNING:
        progress(
            f"note: machine {args.name!r} is not running; start it with "
            f"`vmctl machine start {args.name}`"
        )
    return 0


def guess_shell() -> str:
    if os.name == "nt":
        return "powershell"
    name = Path(os.environ.get("SHELL", "sh")).name
    return name if name in SHELLS else "sh"


def running_status(machine: Machine) -> MachineStatus:
    status = machine.status(check_engine=False)
    if status.state != State.RUNNING or status.agent is None:
        raise VmctlError(
            f"machine {machine.name!r} is not running ({status.state.value})",
            hint=f"start it with: vmctl machine start {machine.name}",
        )
    return status


def ssh_argv(machine: Machine, port: int, command: Sequence[str], tty: bool) -> list[str]:
    ssh = shutil.which("ssh")
    if ssh is None:
        raise VmctlError("no `ssh` client on PATH", hint="install OpenSSH's client")
    f = machine.files
    argv = [
        ssh,
        "-F",
        os.devnull,
        "-i",
        str(f.client_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        # Quoted: ssh splits this option's value at spaces (macOS paths have them).
        f'UserKnownHostsFile="{f.known_hosts}"',
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"HostKeyAlias={f.ssh_alias}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(port),
    ]
    argv.append("-t" if tty else "-T")
    argv.append("root@127.0.0.1")
    if command:
        # One argument is a command line for the guest's shell, as with ssh; several are
        # one command and its arguments, each passed through exactly as given.
        argv += ["--", command[0] if len(command) == 1 else shlex.join(command)]
    return argv


def cmd_ssh(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    machine.require()
    status = running_status(machine)
    assert status.agent is not None
    tty = not args.command and sys.stdin.isatty()
    argv = ssh_argv(machine, status.agent.ssh_port, args.command, tty)
    sys.stdout.flush()
    return subprocess.call(argv)


def cmd_logs(paths: Paths, args: argparse.Namespace) -> int:
    machine = Machine(paths, args.name)
    machine.require()
    f = machine.files
    wanted = [k for k in ("console", "hostagent", "agent") if getattr(args, k)] or [
        "console",
        "hostagent",
        "agent",
    ]
    for kind in wanted:
        if len(wanted) > 1:
            print(f"==> {kind} <==")
        if kind == "console":
            print(tail_text(f.serial_log, args.lines))
        elif kind == "hostagent":
            print(tail_text(f.hostagent_log, args.lines))
        else:
            print(guest_agent_log(machine, args.lines))
    return 0


def tail_text(path: Path, lines: int) -> str:
    return tail_lines(path, lines, missing=f"({path.name} is empty or does not exist yet)")


def guest_agent_log(machine: Machine, lines: int) -> str:
    status = machine.status(check_engine=False)
    if status.state != State.RUNNING or status.agent is None:
        return "(the guest agent's log lives in the VM; start the machine to read it)"
    from vmctl.transport import machine_transport

    transport = machine_transport(machine.files, status.agent.ssh_port)
    transport.connect(timeout=15)
    try:
        count = f"-n {lines}" if lines > 0 else "-n +1"
        code, out, err = transport.run(f"tail {count} /var/lib/vmctl/log/agent.log", timeout=30)
    finally:
        transport.close()
    text = (out or err).decode(errors="replace").rstrip("\n")
    return text if code == 0 else f"(cannot read the guest agent log: {text})"


def cmd_doctor(paths: Paths, args: argparse.Namespace) -> int:
    from vmctl.doctor import diagnose

    report = diagnose(paths, args.name)
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    for section, lines in report.items():
        print(f"{section}:")
        for line in lines:
            print(f"  {line}")
    return 0


# -- image ------------------------------------------------------------------------------


def cmd_image_build(paths: Paths, args: argparse.Namespace) -> int:
    from images.builder import build_image
    from images.errors import ImageBuildError

    try:
        built = build_image(
            paths.images, paths.build_cache, progress=progress, refresh=args.refresh
        )
    except ImageBuildError as e:
        raise VmctlError(f"image build failed: {e.message}", hint=e.hint) from None
    print(f"image {built.image_id}: kernel {built.kernel_release}, initrd {built.initrd}")
    return 0


# -- parser -----------------------------------------------------------------------------


def add_creation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpus", type=int, help="virtual CPUs (default 2)")
    p.add_argument("--memory", help="memory, e.g. 2G or 2048M (default 2G)")
    p.add_argument("--disk", help="data disk size, e.g. 20G (default 20G)")
    p.add_argument(
        "--mount",
        action="append",
        metavar="PATH[:ro]",
        help="share a host folder at the same path (repeatable; default: your home)",
    )
    p.add_argument("--no-mount", action="store_true", help="share no host folder")
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "hvf", "whpx", "tcg"),
        help="accelerator (default auto: hardware if it works, else tcg)",
    )
    p.add_argument(
        "--ssh-port", type=int, help="host port for the guest's sshd (default: any free)"
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        metavar="HOST[:PORT]",
        help="a registry the engine may reach over plain HTTP (repeatable)",
    )


# -- engine -----------------------------------------------------------------------------


def cmd_engine_serve(paths: Paths, args: argparse.Namespace) -> int:
    return native.serve(args.socket, args.root, args.run_root, args.log_level)


HOST_GROUPS = ("machine", "image", "engine")


def build_parser(group: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; for a ``group`` in HOST_GROUPS without the container and
    build verbs, most of the parser (~40 ms to build, on the way to every machine start)."""
    parser = argparse.ArgumentParser(
        prog="vmctl",
        description="Boots a minimal Linux VM whose engine serves the Docker Engine API.",
    )
    parser.add_argument("--version", action="version", version=f"vmctl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    verbs_list = ",".join((*HOST_GROUPS, *VERBS, "build"))
    top = parser.add_subparsers(dest="group", required=True, metavar=f"{{{verbs_list}}}")

    machine = top.add_parser("machine", help="create, start and manage VMs")
    verbs = machine.add_subparsers(dest="verb", required=True)

    def verb(name: str, func: Any, help: str, name_arg: bool = True) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        if name_arg:
            p.add_argument(
                "name",
                nargs="?",
                default=DEFAULT_MACHINE,
                help=f"machine name (default {DEFAULT_MACHINE})",
            )
        p.set_defaults(func=func)
        return p

    add_creation_options(verb("create", cmd_create, "create a machine without starting it"))
    add_creation_options(verb("start", cmd_start, "start a machine (creating it if needed)"))
    verb("stop", cmd_stop, "power a machine down cleanly")
    verb("restart", cmd_restart, "stop and start a machine")
    verb("status", cmd_status, "show a machine's state").add_argument(
        "--format", choices=("table", "json"), default="table"
    )
    verb("ls", cmd_ls, "list machines", name_arg=False).add_argument(
        "--format", choices=("table", "json"), default="table"
    )
    rm = verbs.add_parser("rm", help="remove a machine and its disk")
    rm.add_argument("name")
    rm.add_argument("-f", "--force", action="store_true", help="stop it first if running")
    rm.set_defaults(func=cmd_rm)
    ssh = verb("ssh", cmd_ssh, "open a shell in the VM, or run a command after --")
    ssh.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    env = verb("env", cmd_env, "print the shell commands that point docker at the machine")
    env.add_argument("--shell", choices=SHELLS, help="shell syntax (default: from $SHELL)")
    env.add_argument("--unset", "-u", action="store_true", help="print commands that undo it")
    logs = verb("logs", cmd_logs, "show the console, host agent and guest agent logs")
    logs.add_argument("--console", action="store_true", help="only the serial console")
    logs.add_argument("--hostagent", action="store_true", help="only the host agent")
    logs.add_argument("--agent", action="store_true", help="only the guest agent")
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines of each (0: all)")
    verb(
        "doctor", cmd_doctor, "check QEMU, the accelerator, the image and the machine"
    ).add_argument("--format", choices=("table", "json"), default="table")

    image = top.add_parser("image", help="the VM image")
    image_verbs = image.add_subparsers(dest="verb", required=True)
    build = image_verbs.add_parser("build", help="build the VM image from Debian packages")
    build.add_argument("--refresh", action="store_true", help="refresh the package lists first")
    build.set_defaults(func=cmd_image_build)

    engine = top.add_parser("engine", help="the engine natively on this Linux host (no VM)")
    engine_verbs = engine.add_subparsers(dest="verb", required=True)
    serve = engine_verbs.add_parser(
        "serve",
        help="run the engine in the foreground on this Linux host (root)",
        description="Run the agent natively (Linux, root): the Engine API on a 0600 unix "
        "socket, containers under --root. Ctrl-C stops it; its containers keep running.",
    )
    serve.add_argument("--socket", default=native.DEFAULT_SOCKET, help="the API socket")
    serve.add_argument("--root", default=native.DEFAULT_ROOT, help="images, volumes, containers")
    serve.add_argument(
        "--run-root", default=native.DEFAULT_RUN_ROOT, help="ephemeral runtime files"
    )
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    serve.set_defaults(func=cmd_engine_serve)
    if group in HOST_GROUPS:
        return parser
    from vmctl import containers_cli  # (~30 ms of imports that machine commands skip)

    containers_cli.add_parsers(top)
    from vmctl import build_cli  # `vmctl build`: the Dockerfile builder

    build_cli.add_parsers(top, containers_cli.connection_options())
    return parser


def split_ssh_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`vmctl machine ssh [NAME] -- CMD…`: everything after `--` is the guest command."""
    if "--" in argv and [a for a in argv if a != "--debug"][:2] == ["machine", "ssh"]:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def strip_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Take out vmctl's --debug; after a container verb only before it (a container's
    command may have its own --debug)."""
    verb = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    end = verb if verb < len(argv) and argv[verb] in VERBS else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return kept, len(kept) != len(argv)


def main(argv: list[str] | None = None) -> int:
    head, command = split_ssh_command(list(sys.argv[1:] if argv is None else argv))
    head, debug = strip_debug(head)
    group = next((arg for arg in head if not arg.startswith("-")), None)
    args = build_parser(group).parse_args(head)
    debug = debug or bool(getattr(args, "debug", False))  # container verbs take it too
    if command is not None:
        args.command = command
    try:
        return int(args.func(Paths.from_env(), args))
    except VmctlError as e:
        if debug:
            raise
        print(f"error: {e.message}", file=sys.stderr)
        if e.detail:
            print("\n".join(f"  | {line}" for line in e.detail.splitlines()), file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`vmctl … | head`): stop quietly, as other tools do, and
        # keep Python from failing again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, subprocess.SubprocessError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        print(
            "hint: check the path and its permissions; --debug shows where it happened",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
