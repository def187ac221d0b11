"""`vmctl run`, `ps`, `logs`, `exec`, `start`, `stop`, `rm`, `inspect`, `kill`, `restart`.

The verbs behave like docker's: the same requests in the same order (attach before start,
the wait taken before start), the same output and exit codes (125 when the engine refuses
to create or start, 126/127 when the command cannot run, else the container's own code).
They talk to a machine's engine socket (booting the machine first when it is not running)
or, with `--host unix://PATH` or VMCTL_HOST, to any engine socket.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.humanize import human_duration
from vmctl.engine_client import (
    STDERR,
    SYSTEMERR,
    ContainerOptions,
    EngineClient,
    EngineError,
    FrameDemuxer,
    Hijacked,
    PortBinding,
    create_body,
    exec_body,
)
from vmctl.errors import VmctlError
from vmctl.paths import DEFAULT_MACHINE, Paths
from vmctl.verbs import verb_adder

if TYPE_CHECKING:
    from vmctl.machine import Machine

HOST_ENV = "VMCTL_HOST"
# docker run's own failures (the engine refused, or the command could not be run)
EXIT_REFUSED, EXIT_NOT_RUNNABLE, EXIT_NOT_FOUND = 125, 126, 127
STARTING_WAIT = 600.0


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- which engine -----------------------------------------------------------------------


def socket_from_host(url: str) -> Path:
    """`unix:///path/engine.sock` (or a bare absolute path) -> the socket's path."""
    if url.startswith("unix://"):
        path = url.removeprefix("unix://")
    elif url.startswith("/"):
        path = url
    else:
        raise VmctlError(
            f"unsupported engine address {url!r}",
            hint="vmctl talks to engines over unix sockets: --host unix:///path/to/engine.sock",
        )
    if not path:
        raise VmctlError(f"engine address {url!r} has no path", hint="e.g. unix:///tmp/e.sock")
    return Path(path)


def engine_for(paths: Paths, args: argparse.Namespace) -> EngineClient:
    host = args.host or os.environ.get(HOST_ENV, "")
    if host:
        where = "--host" if args.host else HOST_ENV
        return EngineClient(
            socket_from_host(host),
            connect_hint=f"start an engine on that socket, or drop {where} to use the machine "
            f"{DEFAULT_MACHINE!r} (vmctl boots it when needed)",
        )
    return machine_engine(paths, args.machine)


def machine_engine(paths: Paths, name: str) -> EngineClient:
    """The engine of machine `name`, created and booted first if need be."""
    from vmctl.config import MachineConfig, Mount
    from vmctl.machine import Machine, State

    machine = Machine(paths, name)
    if not machine.exists():
        config = MachineConfig(name=name, mounts=(Mount(path=str(Path.home()), writable=True),))
        machine.check_host(config)
        machine.create(config)
        progress(f"created machine {name!r}")
    state = machine.status(check_engine=False).state
    if state == State.STARTING:
        progress(f"machine {name!r} is starting; waiting for it")
        wait_running(machine)
    elif state != State.RUNNING:
        progress(f"machine {name!r} is {state.value}; starting it")
        status = machine.start(progress)
        took = status.agent.boot_seconds if status.agent else None
        progress(f"machine {name!r} is running" + (f" (booted in {took:.1f} s)" if took else ""))
    return EngineClient(
        machine.files.engine_socket,
        connect_hint=f"the machine runs but its engine socket does not answer; see "
        f"`vmctl machine status {name}`, or restart it: vmctl machine restart {name}",
    )


def wait_running(machine: Machine) -> None:
    from vmctl.machine import State

    deadline = time.monotonic() + STARTING_WAIT
    while time.monotonic() < deadline:
        state = machine.status(check_engine=False).state
        if state == State.RUNNING:
            return
        if state != State.STARTING:
            raise VmctlError(
                f"machine {machine.name!r} did not finish starting ({state.value})",
                hint=f"see `vmctl machine logs {machine.name}`",
            )
        time.sleep(0.2)
    raise VmctlError(
        f"machine {machine.name!r} is still starting after {STARTING_WAIT:.0f} s",
        hint=f"see `vmctl machine logs {machine.name}`",
    )


# -- option parsing ---------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_memory(text: str) -> int:
    """Docker's memory sizes: `512m`, `1g`, `1.5GiB`, `4096` (bytes); powers of 1024."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise VmctlError(
            f"invalid memory size {text!r}", hint="use a number with b, k, m or g, e.g. 512m"
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


def parse_cpus(text: str) -> int:
    """`--cpus 1.5` -> NanoCpus."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise VmctlError(f"invalid --cpus value {text!r}", hint="a number of CPUs, e.g. 0.5 or 2")
    return round(value * 1e9)


def parse_restart(text: str) -> tuple[str, int]:
    name, _, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise VmctlError(
            f"invalid restart policy {text!r}",
            hint="use no, always, unless-stopped or on-failure[:MAX-RETRIES]",
        )
    if count and (name != "on-failure" or not count.isdigit()):
        raise VmctlError(
            f"invalid restart policy {text!r}",
            hint="only on-failure takes a retry count, e.g. on-failure:3",
        )
    return name, int(count or 0)


def parse_port(text: str) -> PortBinding:
    """`[IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]` (one port, no ranges)."""
    spec, _, proto = text.partition("/")
    parts = spec.rsplit(":", 2)
    container = parts[-1]
    host_port = parts[-2] if len(parts) >= 2 else ""
    host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
    if not container.isdigit() or (host_port and not host_port.isdigit()):
        raise VmctlError(
            f"invalid port mapping {text!r}",
            hint="use [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp], e.g. -p 8080:80 (no ranges)",
        )
    return PortBinding(f"{container}/{proto or 'tcp'}", host_ip, host_port)


def parse_ports(spec: str) -> list[PortBinding]:
    from vmctl.port_cli import parse_ports as parse  # that module imports this one

    return parse(spec)


def parse_env(items: list[str]) -> list[str]:
    """`-e K=V` as is; `-e K` takes K from this environment when it is set, as docker does."""
    out = []
    for item in items:
        if "=" not in item and item in os.environ:
            item = f"{item}={os.environ[item]}"
        out.append(item)
    return out


def parse_volume(text: str) -> str:
    """`-v SRC:DST[:OPTS]`; a relative source (`./data`) becomes absolute, as docker does."""
    source, sep, rest = text.partition(":")
    if not sep:
        return text  # an anonymous volume at this path
    if source.startswith(("./", "../")) or source in (".", ".."):
        source = os.path.abspath(source)
    elif source.startswith("~"):
        source = os.path.expanduser(source)
    return f"{source}:{rest}"


def image_reference(image: str) -> str:
    """`busybox` -> `busybox:latest`, for messages."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return image + ":latest"


def run_options(args: argparse.Namespace, console_size: tuple[int, int]) -> ContainerOptions:
    restart, retries = parse_restart(args.restart)
    if args.rm and restart != "no":
        raise VmctlError("conflicting options: --restart and --rm", hint="use one of them")
    return ContainerOptions(
        image=args.image,
        command=list(args.command) or None,
        name=args.name or "",
        detach=args.detach,
        interactive=args.interactive,
        tty=args.tty,
        console_size=console_size,
        auto_remove=args.rm,
        env=parse_env(args.env or []),
        binds=[parse_volume(v) for v in args.volume or []],
        ports=[binding for spec in args.publish or [] for binding in parse_ports(spec)],
        workdir=args.workdir or "",
        user=args.user or "",
        entrypoint=args.entrypoint,
        memory=parse_memory(args.memory) if args.memory else 0,
        nano_cpus=parse_cpus(args.cpus) if args.cpus else 0,
        pids_limit=args.pids_limit,
        network=args.network or "default",
        restart_name=restart,
        restart_retries=retries,
        privileged=args.privileged,
        cap_add=list(args.cap_add or []),
        cap_drop=list(args.cap_drop or []),
        init=True if args.init else None,
    )


# -- terminal and streams ---------------------------------------------------------------


def terminal_size() -> tuple[int, int] | None:
    """(rows, columns) of the terminal on stdout (or stdin), if there is one."""
    for fd in (1, 0):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                size = os.get_terminal_size(fd)
                return size.lines, size.columns
    return None


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """stdin in raw mode (keys go to the container's TTY as typed), restored afterwards."""
    if not enabled:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def follow_resizes(resize: Callable[[int, int], None]) -> Iterator[None]:
    """Send the terminal's size now and at each SIGWINCH."""
    size = terminal_size()
    if size is None or not hasattr(signal, "SIGWINCH"):
        yield
        return

    def send() -> None:
        now = terminal_size()
        if now is not None:
            with contextlib.suppress(VmctlError, OSError):
                resize(*now)

    send()
    previous = signal.signal(
        signal.SIGWINCH, lambda *_: threading.Thread(target=send, daemon=True).start()
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


PROXIED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


@contextlib.contextmanager
def proxy_signals(kill: Callable[[str], None]) -> Iterator[None]:
    """Forward signals vmctl gets to the container, as `docker run` does (sig-proxy).

    A third Ctrl-C leaves vmctl anyway: a PID 1 without handlers ignores SIGINT.
    """
    interrupts = [0]

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            interrupts[0] += 1
            if interrupts[0] >= 3:
                raise KeyboardInterrupt
        threading.Thread(target=_quietly, args=(kill, name), daemon=True).start()

    previous = {}
    for name in PROXIED:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _quietly(kill: Callable[[str], None], name: str) -> None:
    with contextlib.suppress(VmctlError, OSError):
        kill(name)


class Output:
    """Writes to stdout/stderr by fd; a closed reader stops the writes, not the relay."""

    def __init__(self) -> None:
        self.broken: set[int] = set()

    def write(self, fd: int, data: bytes) -> None:
        if fd in self.broken:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except BrokenPipeError:
            self.broken.add(fd)


def demultiplexed(chunks: Iterator[bytes], tty: bool) -> Iterator[tuple[int, bytes]]:
    """(fd, bytes) to write for each piece of an attach/exec/logs stream."""
    if tty:
        for chunk in chunks:
            yield 1, chunk
        return
    demuxer = FrameDemuxer()
    for chunk in chunks:
        for kind, payload in demuxer.feed(chunk):
            yield (2 if kind in (STDERR, SYSTEMERR) else 1), payload


def _received(stream: Hijacked) -> Iterator[bytes]:
    try:
        while data := stream.recv(65536):
            yield data
    except OSError as e:
        raise VmctlError(f"the container's stream broke: {e.strerror or e}") from None


def relay(stream: Hijacked, tty: bool, forward_stdin: bool) -> None:
    """Copy our stdin to the stream (half-closing at EOF) and its output to ours, until the
    engine ends the stream."""
    sys.stdout.flush()
    sys.stderr.flush()
    if forward_stdin:
        threading.Thread(target=_forward_stdin, args=(stream,), daemon=True).start()
    out = Output()
    try:
        for fd, data in demultiplexed(_received(stream), tty):
            out.write(fd, data)
    finally:
        stream.close()


def _forward_stdin(stream: Hijacked) -> None:
    try:
        while data := os.read(0, 65536):
            stream.sendall(data)
    except OSError:
        pass
    stream.close_write()


# -- errors -----------------------------------------------------------------------------


def with_hint(error: EngineError, exit_code: int | None = None) -> EngineError:
    if not error.hint:
        text = error.message.lower()
        if error.status == 404 and "container" in text:
            error.hint = "list containers with: vmctl ps -a"
        elif error.status == 409 and "already in use" in text:
            error.hint = "remove that container (vmctl rm -f NAME) or choose another --name"
        elif error.status == 409 and "not running" in text:
            error.hint = "start it first: vmctl start CONTAINER"
        elif error.status >= 500:
            error.hint = "the engine's log may say more: `vmctl machine logs --agent`"
    if exit_code is not None:
        error.exit_code = exit_code
    return error


def start_exit_code(message: str) -> int:
    """docker run's code when the command cannot be started, judged from the error text."""
    text = message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return EXIT_NOT_FOUND
    if "permission denied" in text or "is a directory" in text:
        return EXIT_NOT_RUNNABLE
    return EXIT_REFUSED


def report(error: VmctlError) -> None:
    print(f"error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"hint: {error.hint}", file=sys.stderr)


def for_each(names: list[str], action: Callable[[str], None], quiet_404: bool = False) -> int:
    """Apply `action` to each container, printing its name as docker does; 1 if any failed."""
    failed = False
    for name in names:
        try:
            action(name)
        except EngineError as e:
            if quiet_404 and e.status == 404:
                continue
            report(with_hint(e))
            failed = True
            continue
        print(name, flush=True)
    return 1 if failed else 0


# -- verbs ------------------------------------------------------------------------------


def cmd_run(paths: Paths, args: argparse.Namespace) -> int:
    if args.interactive and args.tty and not os.isatty(0):
        raise VmctlError(
            "the input device is not a TTY",
            hint="drop -t when stdin is a pipe or a file",
            exit_code=EXIT_REFUSED,
        )
    try:
        size = (terminal_size() or (0, 0)) if args.tty else (0, 0)
        opts = run_options(args, size)
        engine = engine_for(paths, args)
        created = create(engine, opts)
    except VmctlError as e:
        e.exit_code = EXIT_REFUSED if e.exit_code == 1 else e.exit_code
        raise
    for warning in created.get("Warnings") or []:
        progress(f"WARNING: {warning}")
    container = str(created["Id"])
    if opts.detach:
        start(engine, container, opts.auto_remove)
        print(container)
        return 0
    stream = engine.attach_container(container, stdin=opts.interactive)
    try:
        waiter = engine.wait_container(container, "removed" if opts.auto_remove else "next-exit")
    except BaseException:
        stream.close()
        raise
    try:
        start(engine, container, opts.auto_remove)
    except BaseException:
        stream.close()
        waiter.close()
        raise
    raw = opts.tty and opts.interactive and os.isatty(0)
    if opts.tty:
        session = follow_resizes(lambda h, w: engine.resize_container(container, h, w))
    else:
        session = proxy_signals(lambda name: engine.kill_container(container, name))
    with session, raw_terminal(raw):
        relay(stream, opts.tty, opts.interactive)
    result = waiter.result()
    if result.error:
        progress(f"error: {result.error}")
    return result.status_code


def create(engine: EngineClient, opts: ContainerOptions) -> dict[str, Any]:
    try:
        return engine.create_container(create_body(opts), opts.name)
    except EngineError as e:
        if e.status == 404 and "image" in e.message.lower():
            progress(f"Unable to find image '{image_reference(opts.image)}' locally")
            e.hint = (
                "vmctl run does not pull images yet; the engine has what was loaded into it "
                "(busybox is preloaded)"
            )
        raise with_hint(e, EXIT_REFUSED) from None


def start(engine: EngineClient, container: str, auto_remove: bool) -> None:
    try:
        engine.start_container(container)
    except EngineError as e:
        if auto_remove:  # it never ran, so the engine will not remove it for us
            with contextlib.suppress(VmctlError):
                engine.remove_container(container, force=True)
        code = start_exit_code(e.message)
        if code == EXIT_NOT_FOUND and not e.hint:
            e.hint = "check the command's name and that the image has it"
        raise with_hint(e, code) from None


def cmd_start(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    if not args.attach:
        return for_each(args.containers, engine.start_container)
    if len(args.containers) != 1:
        raise VmctlError("you cannot start and attach multiple containers at once")
    container = args.containers[0]
    try:
        tty = bool((engine.inspect_container(container).get("Config") or {}).get("Tty"))
        stream = engine.attach_container(container, stdin=args.interactive)
    except EngineError as e:
        raise with_hint(e) from None
    waiter = engine.wait_container(container, "next-exit")
    try:
        engine.start_container(container)
    except EngineError as e:
        stream.close()
        waiter.close()
        raise with_hint(e, start_exit_code(e.message)) from None
    raw = tty and args.interactive and os.isatty(0)
    if tty:
        session = follow_resizes(lambda h, w: engine.resize_container(container, h, w))
    else:
        session = proxy_signals(lambda name: engine.kill_container(container, name))
    with session, raw_terminal(raw):
        relay(stream, tty, args.interactive)
    return waiter.result().status_code


def cmd_exec(paths: Paths, args: argparse.Namespace) -> int:
    if not args.command:
        raise VmctlError("exec needs a command to run", hint="e.g. vmctl exec CONTAINER sh")
    if args.interactive and args.tty and not os.isatty(0):
        raise VmctlError("the input device is not a TTY", hint="drop -t when stdin is a pipe")
    engine = engine_for(paths, args)
    size = terminal_size() if args.tty else None
    body = exec_body(
        args.command,
        args.interactive,
        args.tty,
        size or (0, 0),
        parse_env(args.env or []),
        args.user or "",
        args.workdir or "",
        args.detach,
    )
    try:
        exec_id = engine.exec_create(args.container, body)
        stream = engine.exec_start(exec_id, args.tty, size, detach=args.detach)
    except EngineError as e:
        raise with_hint(e, exec_failure_code(e)) from None
    if stream is None:
        return 0
    raw = args.tty and args.interactive and os.isatty(0)
    resizes = follow_resizes(lambda h, w: engine.exec_resize(exec_id, h, w))
    with resizes if args.tty else contextlib.nullcontext(), raw_terminal(raw):
        relay(stream, args.tty, args.interactive)
    code = engine.exec_inspect(exec_id).get("ExitCode")
    return int(code) if isinstance(code, int) else 0


def exec_failure_code(error: EngineError) -> int:
    """No container (or not running): 1; a command that cannot run: 126/127, as docker."""
    if error.status in (404, 409):
        return 1
    code = start_exit_code(error.message)
    return code if code != EXIT_REFUSED else 126


def cmd_ps(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    containers = engine.list_containers(all=args.all)
    if args.quiet:
        for c in containers:
            print(c["Id"] if args.no_trunc else c["Id"][:12])
        return 0
    rows = [ps_row(c, time.time(), truncate=not args.no_trunc) for c in containers]
    if args.format == "json":
        for row in rows:
            print(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        return 0
    print(ps_table(rows), end="")
    return 0


PS_COLUMNS = (
    ("CONTAINER ID", "ID"),
    ("IMAGE", "Image"),
    ("COMMAND", "Command"),
    ("CREATED", "RunningFor"),
    ("STATUS", "Status"),
    ("PORTS", "Ports"),
    ("NAMES", "Names"),
)


def ps_row(c: dict[str, Any], now: float, truncate: bool = True) -> dict[str, str]:
    """One container as `docker ps --format json` prints it."""
    created = int(c.get("Created") or 0)
    command = str(c.get("Command") or "")
    mounts = c.get("Mounts") or []
    names = [n.lstrip("/") for n in c.get("Names") or []]
    networks = ((c.get("NetworkSettings") or {}).get("Networks")) or {}
    labels = c.get("Labels") or {}
    return {
        "Command": json.dumps(ellipsis(command, 20) if truncate else command, ensure_ascii=False),
        "CreatedAt": datetime.datetime.fromtimestamp(created)
        .astimezone()
        .strftime("%Y-%m-%d %H:%M:%S %z %Z"),
        "ID": str(c.get("Id", ""))[:12] if truncate else str(c.get("Id", "")),
        "Image": str(c.get("Image", "")),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "LocalVolumes": str(sum(1 for m in mounts if m.get("Type") == "volume")),
        "Mounts": ",".join(
            ellipsis(str(m.get("Name") or m.get("Source") or ""), 15)
            if truncate
            else str(m.get("Name") or m.get("Source") or "")
            for m in mounts
        ),
        "Names": ",".join(n for n in names if "/" not in n),
        "Networks": ",".join(sorted(networks)),
        "Ports": format_ports(c.get("Ports") or []),
        "RunningFor": human_duration(now - created) + " ago",
        "Size": "0B",
        "State": str(c.get("State", "")),
        "Status": str(c.get("Status", "")),
    }


def ps_table(rows: list[dict[str, str]]) -> str:
    """docker's table: columns at least 10 wide, three spaces between them."""
    table = [[title for title, _ in PS_COLUMNS]] + [[r[key] for _, key in PS_COLUMNS] for r in rows]
    widths = [max(10, max(len(row[i]) for row in table) + 3) for i in range(len(PS_COLUMNS))]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_ports(ports: list[dict[str, Any]]) -> str:
    out = []
    for p in ports:
        private = f"{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
        if p.get("PublicPort"):
            ip = p.get("IP") or "0.0.0.0"
            host = f"[{ip}]" if ":" in ip else ip
            out.append(f"{host}:{p['PublicPort']}->{private}")
        else:
            out.append(private)
    return ", ".join(out)


def cmd_logs(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    try:
        tty = bool((engine.inspect_container(args.container).get("Config") or {}).get("Tty"))
        chunks = engine.container_logs(
            args.container, follow=args.follow, tail=args.tail, timestamps=args.timestamps
        )
        out = Output()
        sys.stdout.flush()
        for fd, data in demultiplexed(chunks, tty):
            out.write(fd, data)
    except EngineError as e:
        raise with_hint(e) from None
    return 0


def cmd_stop(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    return for_each(args.containers, lambda c: engine.stop_container(c, args.timeout, args.signal))


def cmd_restart(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    return for_each(args.containers, lambda c: engine.restart_container(c, args.timeout))


def cmd_kill(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    return for_each(args.containers, lambda c: engine.kill_container(c, args.signal))


def cmd_rm(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    return for_each(
        args.containers,
        lambda c: engine.remove_container(c, force=args.force, volumes=args.volumes),
        quiet_404=args.force,
    )


def cmd_inspect(paths: Paths, args: argparse.Namespace) -> int:
    engine = engine_for(paths, args)
    return inspect_each(args.containers, engine.inspect_container, "container")


def inspect_each(names: list[str], fetch: Callable[[str], Any], kind: str) -> int:
    """docker inspect's output: one JSON array of what was found; 1 if any was missing."""
    found, failed = [], False
    for name in names:
        try:
            found.append(fetch(name))
        except EngineError as e:
            if e.status != 404:
                raise with_hint(e) from None
            print(f"error: no such {kind}: {name}", file=sys.stderr)
            failed = True
    print(json.dumps(found, indent=4, ensure_ascii=False))
    return 1 if failed else 0


# -- parsers ----------------------------------------------------------------------------


def connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("engine")
    group.add_argument(
        "--machine",
        default=DEFAULT_MACHINE,
        metavar="NAME",
        help=f"use this machine's engine, booting it if needed (default {DEFAULT_MACHINE})",
    )
    group.add_argument(
        "--host",
        metavar="unix://PATH",
        help=f"use the engine on this socket instead (or set {HOST_ENV})",
    )
    parent.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parent


def add_parsers(top: Any) -> None:
    """Register the container verbs on the top-level subparsers of `vmctl`."""
    parent = connection_options()

    verb = verb_adder(top, parent)

    run = verb("run", cmd_run, "create and run a container (like docker run)")
    run.add_argument("-d", "--detach", action="store_true", help="run in the background")
    run.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    run.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    run.add_argument("--name", help="the container's name")
    run.add_argument("-e", "--env", action="append", metavar="K=V", help="set a variable")
    run.add_argument("-v", "--volume", action="append", metavar="SRC:DST[:ro]", help="bind")
    run.add_argument("-p", "--publish", action="append", metavar="[IP:]HOST:CTR", help="port")
    run.add_argument("-w", "--workdir", metavar="DIR", help="working directory")
    run.add_argument("-u", "--user", metavar="USER[:GROUP]", help="run as this user")
    run.add_argument("--entrypoint", help="override the image's entrypoint")
    run.add_argument("-m", "--memory", help="memory limit, e.g. 512m")
    run.add_argument("--cpus", help="CPU limit, e.g. 0.5")
    run.add_argument("--pids-limit", type=int, metavar="N", help="process limit")
    run.add_argument("--network", "--net", metavar="MODE", help="bridge, none, host, …")
    run.add_argument("--restart", default="no", metavar="POLICY", help="restart policy")
    run.add_argument("--privileged", action="store_true", help="lift the confinement")
    run.add_argument("--cap-add", action="append", metavar="CAP", help="add a capability")
    run.add_argument("--cap-drop", action="append", metavar="CAP", help="drop a capability")
    run.add_argument("--init", action="store_true", help="run an init as PID 1")
    run.add_argument("image")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD", help="command")

    ps = verb("ps", cmd_ps, "list containers")
    ps.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    ps.add_argument("--no-trunc", action="store_true", help="do not shorten IDs and commands")
    ps.add_argument("--format", choices=("table", "json"), default="table")

    logs = verb("logs", cmd_logs, "show a container's output")
    logs.add_argument("-f", "--follow", action="store_true", help="keep following it")
    logs.add_argument("-n", "--tail", default="all", metavar="N", help="only the last N lines")
    logs.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    logs.add_argument("container")

    exe = verb("exec", cmd_exec, "run a command in a running container")
    exe.add_argument("-d", "--detach", action="store_true", help="run it in the background")
    exe.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    exe.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    exe.add_argument("-e", "--env", action="append", metavar="K=V", help="set a variable")
    exe.add_argument("-u", "--user", metavar="USER[:GROUP]", help="run as this user")
    exe.add_argument("-w", "--workdir", metavar="DIR", help="working directory")
    exe.add_argument("container")
    exe.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD", help="command")

    start = verb("start", cmd_start, "start stopped containers")
    start.add_argument("-a", "--attach", action="store_true", help="attach to its output")
    start.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    start.add_argument("containers", nargs="+", metavar="CONTAINER")

    stop = verb("stop", cmd_stop, "stop running containers")
    stop.add_argument("-t", "--timeout", type=int, metavar="N", help="seconds before SIGKILL")
    stop.add_argument("-s", "--signal", help="signal to stop with (default: the image's)")
    stop.add_argument("containers", nargs="+", metavar="CONTAINER")

    restart = verb("restart", cmd_restart, "restart containers")
    restart.add_argument("-t", "--timeout", type=int, metavar="N", help="seconds before SIGKILL")
    restart.add_argument("containers", nargs="+", metavar="CONTAINER")

    kill = verb("kill", cmd_kill, "send a signal to containers (default SIGKILL)")
    kill.add_argument("-s", "--signal", help="signal name or number")
    kill.add_argument("containers", nargs="+", metavar="CONTAINER")

    rm = verb("rm", cmd_rm, "remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    rm.add_argument("-v", "--volumes", action="store_true", help="also its anonymous volumes")
    rm.add_argument("containers", nargs="+", metavar="CONTAINER")

    inspect = verb("inspect", cmd_inspect, "show containers' details as JSON")
    inspect.add_argument("containers", nargs="+", metavar="CONTAINER")

    from vmctl import system_cli  # imports this module: registered last

    system_cli.add_parsers(top, parent)

    from vmctl import copy_cli  # imports this module too

    copy_cli.add_parsers(top, parent)

    from vmctl import images_cli  # imports this module too

    images_cli.add_parsers(top, parent)

    from vmctl import commit_cli  # imports this module too

    commit_cli.add_parsers(top, parent)

    from vmctl import port_cli  # imports this module too

    port_cli.add_parsers(top, parent)

    from vmctl import network_cli  # imports this module too

    network_cli.add_parsers(top, parent)
