"""The host agent: one background process per running machine.

It runs QEMU, watches the boot (falling back to tcg when a hardware accelerator fails or
hangs), connects to the guest's sshd with the pinned host key, serves the engine on
<machine dir>/engine.sock (each client connection becomes one channel of a single SSH
transport), follows the engine's events (vmctl/guest_events.py; hooks in `event_hooks`),
and on SIGTERM powers the guest down through QMP. Its progress and outcome go to
status.json, its log to hostagent.log.

Started as `python -m vmctl.hostagent --dir <machine dir>` by `vmctl machine start`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from vmctl import accel as accelmod
from vmctl import client, procs
from vmctl.atomic import write_atomic
from vmctl.config import MachineConfig, load_config
from vmctl.console import ConsoleLog
from vmctl.errors import VmctlError
from vmctl.forward import UnixSocketForwarder
from vmctl.guest_events import EventHooks, EventSubscriber
from vmctl.localports import check_port_free, free_port
from vmctl.paths import MachineFiles, Paths
from vmctl.ports import HostForwards, PortPublisher, qmp_monitor
from vmctl.qemu import QEMU_INSTALL_HINT, BootImage, build_argv, qemu_binary
from vmctl.spares import SpareUpstreams
from vmctl.status import (
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    AgentStatus,
    read_status,
    write_status,
)

if TYPE_CHECKING:  # paramiko costs ~0.1 s to import: loaded after QEMU is running
    import paramiko

    from vmctl.transport import SSHTransport

log = logging.getLogger(__name__)

GUEST_ENGINE_SOCKET = "/run/vmctl/engine.sock"
# Console markers written by the guest (guest/rootfs/init, boot steps, the agent).
BOOT_PROGRESS = "vmctl-init: stage 1"
SSH_READY = "ssh reachable"  # sshd listens on the guest's address, or is about to: connect
AGENT_LISTENING = "vmctl-agent: listening on"  # bound before the boot ends: ask at once
READY = "VMCTL-READY"
POWERED_OFF = "reboot: Power down"  # the kernel's last line after a clean poweroff
GUEST_ERROR = "VMCTL-ERROR: "
# A working accelerator reaches the guest's init in well under a second; nested KVM that
# hangs never does. Under tcg the bound is the whole boot.
HARDWARE_PROGRESS_BOUND = 15.0
# Under tcg the guest's first line comes after 2-5 s; silence for this long is a stalled
# VM (seen once in about a hundred boots here), which one fresh attempt gets past.
TCG_PROGRESS_BOUND = 60.0
BOOT_DEADLINE = 120.0
SSH_DEADLINE = 60.0
ADOPT_SSH_DEADLINE = 20.0  # a running guest answers at once; do not keep a start waiting
ENGINE_CHECK_TIMEOUT = 10.0
CONSOLE_POLL = 0.01  # reading a small, growing file; the ready line is acted on at once
POWERDOWN_TIMEOUT = 30.0


class AccelFailed(Exception):
    """This accelerator did not boot; another one may."""


class StopRequested(Exception):
    pass


class BootStalled(Exception):
    """No console output at all within the bound: the VM is stuck before the guest ran."""


class BackgroundConnect:
    """SSH's handshake runs beside the guest's last boot steps instead of after them."""

    def __init__(self, transport: SSHTransport, deadline: float) -> None:
        self.transport = transport
        self.deadline = deadline
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ssh-connect", daemon=True)

    def _run(self) -> None:
        try:
            self.transport.wait_until_connected(self.deadline, on_attempt=self._check_cancelled)
        except BaseException as e:  # handed to the boot thread by result()
            self.error = e

    def _check_cancelled(self, attempt: int, last: BaseException | None) -> None:
        if self.cancelled.is_set():
            raise StopRequested()

    def cancel(self) -> None:
        """The VM it waits for is gone: retry no more (a relaunch may reuse the port).
        Not close(): that waits for an attempt in flight, and the boot must not."""
        self.cancelled.set()

    def start(self) -> None:
        if not self.thread.is_alive() and self.thread.ident is None:
            self.thread.start()

    def result(self) -> SSHTransport:
        self.start()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.transport


C = TypeVar("C", bound=client.Stream)


class EarlyCheck(Generic[C]):
    """The engine check, sent as soon as the agent says it listens, before the boot ends.

    The request waits in the socket's queue and is answered the moment the agent serves:
    no round trip after its announcement. Any failure here only means the boot goes on to
    the announcement and the usual check.
    """

    def __init__(self, open_channel: Callable[[], C]) -> None:
        self.open_channel = open_channel
        self.answered = threading.Event()
        self.thread = threading.Thread(target=self._run, name="engine-check", daemon=True)
        self._lock = threading.Lock()
        self._channel: C | None = None  # kept open: the first spare connection
        self._abandoned = False

    def start(self) -> None:
        with self._lock:
            if self.thread.ident is None:
                self.thread.start()

    def outcome(self, timeout: float) -> tuple[bool, C | None]:
        """Whether the engine answered (a check in flight gets ``timeout`` more) and the
        connection it answered on, still open, now the caller's. A check that answers only
        later is abandoned: it closes its own connection."""
        if self.thread.ident is not None:
            self.thread.join(timeout)
        with self._lock:
            self._abandoned = True
            channel, self._channel = self._channel, None
            return self.answered.is_set(), channel

    def _run(self) -> None:
        try:
            channel = self.open_channel()
            reusable = client.ping_keep_open(channel)
        except Exception as e:  # noqa: BLE001 (the usual check reports real failures)
            log.info("early engine check failed (%s); waiting for the announcement", e)
            return
        with self._lock:
            keep = reusable and not self._abandoned
            if keep:
                self._channel = channel
            self.answered.set()
        if reusable and not keep:  # answered too late to be kept
            channel.close()


def check_channel(ssh: BackgroundConnect) -> paramiko.Channel:
    """The early check's channel, once SSH is up; it waits as long as the boot may take."""
    channel = ssh.result().open_unix_channel(GUEST_ENGINE_SOCKET)
    channel.settimeout(BOOT_DEADLINE)
    return channel


EXIT_UNKNOWN = -1000  # a QEMU we took over is not our child: its exit status is lost


class QemuProcess:
    """QEMU as a child we started, or an orphan left by a previous host agent."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen

    def exit_code(self) -> int | None:
        """None while running; the exit code (negative: killed by that signal) after."""
        if self.popen is not None:
            return self.popen.poll()
        return None if procs.alive(self.pid) else EXIT_UNKNOWN

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if self.popen is not None:
            self.popen.wait(10)
        else:
            procs.wait_gone(self.pid, 10)


def _close(channel: paramiko.Channel) -> None:
    channel.close()


def describe_exit(code: int) -> str:
    if code == EXIT_UNKNOWN:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def qemu_version(binary: str, cache: Path) -> str:
    """QEMU's version (part of the accelerator memory's key).

    Running `qemu --version` costs ~50 ms of every start, so the answer is kept in
    `cache`, keyed by the binary's path, inode, size and mtime: an upgrade asks again.
    """
    found = shutil.which(binary)
    if found is None:
        raise VmctlError(f"{binary} not found on PATH", hint=QEMU_INSTALL_HINT)
    info = os.stat(found)
    key = f"{os.path.realpath(found)} {info.st_ino} {info.st_size} {info.st_mtime_ns}"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and isinstance(saved.get("version"), str):
            return str(saved["version"])
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise VmctlError(f"cannot run {found}: {e}", hint=QEMU_INSTALL_HINT) from None
    first = out.stdout.splitlines()[0] if out.stdout else ""
    version = first.replace("QEMU emulator version", "").strip() or "unknown"
    with contextlib.suppress(OSError):  # only a cache: the next start asks again
        write_atomic(cache, json.dumps({"key": key, "version": version}))
    return version


class HostAgent:
    def __init__(self, paths: Paths, files: MachineFiles) -> None:
        self.paths = paths
        self.files = files
        self.status = AgentStatus(state=STARTING, pid=os.getpid(), started_at=time.time())
        self.stop_event = threading.Event()
        self.qemu: QemuProcess | None = None
        self.transport: SSHTransport | None = None
        self.transport_lock = threading.Lock()
        self.forwarder: UnixSocketForwarder | None = None
        self.spares: SpareUpstreams[paramiko.Channel] | None = None
        self.checked_channel: paramiko.Channel | None = None  # the engine check's, still open
        self.config: MachineConfig | None = None
        # the guest engine's events: register here to act on them (e.g. published ports)
        self.event_hooks = EventHooks()
        self.events: EventSubscriber | None = None
        self.ports: PortPublisher | None = None  # published ports, forwarded by QEMU

    # -- status ---------------------------------------------------------------------

    def report(self, state: str | None = None, **fields: object) -> None:
        if state:
            self.status.state = state
        for key, value in fields.items():
            setattr(self.status, key, value)
        write_status(self.files.status, self.status)

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.status.warnings.append(message)
        self.report()

    # -- main -----------------------------------------------------------------------

    def run(self) -> int:
        if not take_lock(self.files.hostagent_lock):
            log.error("another host agent runs this machine; exiting")
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_event.set())
        previous = read_status(self.files.status)  # read before our own report replaces it
        procs.write_pid(self.files.hostagent_pid, os.getpid())
        self.report(STARTING)
        outcome, failure = "stopped", None
        try:
            self.config = load_config(self.files.config)
            # A QEMU of this machine still running (its host agent died) is taken over,
            # never booted beside: two VMs on one disk would corrupt it.
            if not self.adopt(previous):
                self.boot()
            self.serve_engine()
            outcome = self.supervise()
        except StopRequested:
            outcome = "stopped before it finished booting"
        except VmctlError as e:
            log.error("start failed: %s", e.message)
            failure = e
        except Exception as e:  # a bug: keep the traceback in the log, tell the user
            log.exception("host agent crashed")
            failure = VmctlError(f"host agent error: {e}", hint=f"see {self.files.hostagent_log}")
        finally:
            self.shutdown()
            if failure is not None:
                self.report(
                    FAILED, message=failure.message, hint=failure.hint, detail=failure.detail
                )
            else:
                self.report(STOPPED, message=outcome)
            # Last: while the pid file names us, `status` says stopping, not degraded.
            self.files.hostagent_pid.unlink(missing_ok=True)
        return 0 if failure is None else 1

    # -- boot -----------------------------------------------------------------------

    def boot(self) -> None:
        assert self.config is not None
        from images.built import current_image

        built = current_image(self.paths.images)
        if built is None:
            raise VmctlError("no VM image has been built", hint="run: vmctl image build")
        image = BootImage(kernel=built.kernel, initrd=built.initrd)
        binary = qemu_binary()
        version = qemu_version(binary, self.paths.qemu_version_file)
        memory = accelmod.AccelMemory(self.paths.accel_file)
        fingerprint = accelmod.host_fingerprint(version)
        choices = accelmod.plan(self.config.accel, accelmod.host_os(), memory, fingerprint)
        failed: list[tuple[str, str]] = []
        for i, choice in enumerate(choices):
            self.report(accel=choice.accel, accel_reason=choice.reason)
            try:
                self.launch(image, choice.accel)
            except AccelFailed as e:
                failed.append((choice.accel, str(e)))
                if i + 1 == len(choices):
                    raise VmctlError(
                        f"the machine did not boot with {choice.accel}: {e}",
                        hint='try the software accelerator: set "accel": "tcg" '
                        f"in {self.files.config}",
                        detail=ConsoleLog(self.files.serial_log).tail(),
                    ) from None
                self.warn(
                    f"{choice.accel} failed ({e}); booting with tcg instead (slower). "
                    "This is remembered for this host; `vmctl machine doctor` explains."
                )
                continue
            # Only now is a failure the accelerator's fault: the same VM booted without it.
            # (Had tcg failed too, the cause would be the VM, not the accelerator.)
            for accel, reason in failed:
                memory.record(accel, fingerprint, False, reason)
            if choice.accel != "tcg":
                memory.record(choice.accel, fingerprint, True, "booted")
            return

    def launch(self, image: BootImage, accel: str) -> None:
        assert self.config is not None
        explicit = self.config.ssh_port
        port_retries, stalls = 0, 0
        while True:
            port = explicit or free_port()
            if explicit:
                check_port_free(port)
            argv = build_argv(self.config, self.files, image, accel, port, accelmod.host_os())
            self.files.serial_log.unlink(missing_ok=True)
            log.info("starting QEMU (%s, ssh on 127.0.0.1:%d): %s", accel, port, " ".join(argv))
            with open(self.files.qemu_log, "wb") as qlog:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=qlog,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # QEMU outlives a crashed host agent
                )
            self.qemu = QemuProcess(popen.pid, popen)
            self.report(qemu_pid=popen.pid, ssh_port=port)
            ssh = BackgroundConnect(self.new_transport(port), time.monotonic() + BOOT_DEADLINE)
            early = EarlyCheck(functools.partial(check_channel, ssh))
            try:
                self.wait_for_boot(accel, ssh.start, early)
            except AccelFailed as e:
                ssh.cancel()
                if "host forwarding rule" in str(e) and not explicit and port_retries < 2:
                    port_retries += 1
                    continue  # another process took the free port first: pick again
                raise
            except BootStalled as e:
                ssh.cancel()
                stalls += 1
                if stalls > 1:
                    raise VmctlError(
                        f"the VM stalled twice before the guest started ({e})",
                        hint=f"see {self.files.qemu_log}, and try `vmctl machine start` again",
                    ) from None
                self.warn(f"the VM stalled before the guest started ({e}); booting it again")
                continue
            except BaseException:
                ssh.cancel()
                raise
            self.transport = ssh.result()
            # The announcement may come first: an early check in flight answers moments later.
            answered, self.checked_channel = early.outcome(ENGINE_CHECK_TIMEOUT)
            if answered:
                log.info("engine answers through SSH")
            else:
                self.check_engine()
            return

    def wait_for_boot(
        self,
        accel: str,
        on_ssh_ready: Callable[[], None],
        early: EarlyCheck[paramiko.Channel] | None = None,
    ) -> None:
        """Watch the console until the guest is ready: the agent's announcement, or the
        early check answered (whichever comes first); errors, stalls and deadlines raise."""
        assert self.qemu is not None
        console = ConsoleLog(self.files.serial_log)
        started = time.monotonic()
        progressed = False
        ssh_ready = agent_listening = False
        while True:
            for line in console.new_lines():
                if BOOT_PROGRESS in line:
                    progressed = True
                if SSH_READY in line:
                    ssh_ready = True
                    on_ssh_ready()
                if AGENT_LISTENING in line:
                    agent_listening = True
                if ssh_ready and agent_listening and early is not None:
                    early.start()  # (not before ssh is reachable: it connects SSH first)
                if GUEST_ERROR in line:
                    message = line.split(GUEST_ERROR, 1)[1].strip()
                    self.qemu.kill()
                    raise VmctlError(
                        f"the guest failed to boot: {message}",
                        hint=f"the full console log is {self.files.serial_log}",
                        detail=console.tail(),
                    )
                if READY in line:
                    log.info("guest ready after %.1f s: %s", time.monotonic() - started, line)
                    return
            if early is not None and early.answered.is_set():
                log.info(
                    "guest ready after %.1f s: the engine answered", time.monotonic() - started
                )
                return
            code = self.qemu.exit_code()
            if code is not None:
                qemu_said = self.qemu_log_tail()
                message = f"QEMU exited during boot ({describe_exit(code)}): {qemu_said}"
                if accel != "tcg":
                    raise AccelFailed(message)
                if "host forwarding rule" in qemu_said:
                    raise AccelFailed(message)
                raise VmctlError(
                    message,
                    hint="if the guest ran out of memory, give it more: "
                    f"edit memory_mib in {self.files.config}",
                    detail=console.tail(),
                )
            elapsed = time.monotonic() - started
            if accel != "tcg" and not progressed and elapsed > HARDWARE_PROGRESS_BOUND:
                self.qemu.kill()
                raise AccelFailed(f"no boot progress within {HARDWARE_PROGRESS_BOUND:.0f} s")
            if accel == "tcg" and not progressed and elapsed > TCG_PROGRESS_BOUND:
                state = self.qmp("query-status")
                self.qemu.kill()
                raise BootStalled(
                    f"no console output within {TCG_PROGRESS_BOUND:.0f} s; QEMU status: {state}"
                )
            if elapsed > BOOT_DEADLINE:
                self.qemu.kill()
                raise VmctlError(
                    f"the machine did not finish booting within {BOOT_DEADLINE:.0f} s",
                    hint=f"the full console log is {self.files.serial_log}",
                    detail=console.tail(),
                )
            if self.stop_event.is_set():
                self.qemu.kill()
                raise StopRequested()
            time.sleep(CONSOLE_POLL)

    def qemu_log_tail(self) -> str:
        try:
            lines = self.files.qemu_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " / ".join(lines[-3:])

    # -- ssh and engine ---------------------------------------------------------------

    def new_transport(self, port: int) -> SSHTransport:
        from vmctl.transport import machine_transport

        return machine_transport(self.files, port)

    def check_engine(self) -> None:
        """Ask the engine for /_ping; the connection, left open, becomes the first spare.

        The answer is judged by its length, not by the end of its connection, which the
        agent closes only once its answer is logged; and the open connection saves the
        first client a channel open.
        """
        channel = self.open_engine_channel()
        channel.settimeout(ENGINE_CHECK_TIMEOUT)  # an agent that accepts but never answers
        try:
            reusable = client.ping_keep_open(channel)
        except OSError as e:
            raise VmctlError(
                f"the guest agent did not answer /_ping: {e}",
                hint="see `vmctl machine logs --agent`",
            ) from None
        if reusable:
            self.checked_channel = channel
        log.info("engine answers through SSH")

    def adopt(self, previous: AgentStatus | None) -> bool:
        """Take over a QEMU of this machine left running by a host agent that died.

        False if there is none, or if it cannot be reached; it is then powered down, so a
        fresh boot never runs beside it.
        """
        pid = procs.live_pid(self.files.qemu_pid, self.files.dir)
        if pid is None:
            return False
        self.qemu = QemuProcess(pid)
        if previous is None or not previous.ssh_port:
            self.warn("cannot take over the running VM (its SSH port is unknown); restarting it")
            self.power_down()
            return False
        self.report(
            qemu_pid=pid,
            ssh_port=previous.ssh_port,
            accel=previous.accel,
            accel_reason=previous.accel_reason,
        )
        try:
            transport = self.new_transport(previous.ssh_port)
            transport.wait_until_connected(time.monotonic() + ADOPT_SSH_DEADLINE)
            self.transport = transport
            self.check_engine()
        except VmctlError as e:
            self.warn(f"could not take over the running VM ({e.message}); restarting it")
            self.power_down()
            return False
        if self.stop_event.is_set():
            raise StopRequested()
        log.info("took over running QEMU pid %d", pid)
        return True

    def open_engine_channel(self, reconnect: bool = True) -> paramiko.Channel:
        """A channel to the guest's engine socket, reconnecting SSH if it dropped.

        Without ``reconnect`` (the spare channels' background opens) a dropped connection
        is an error: the next client's open mends it, not threads that would hold the
        transport lock meanwhile (or reconnect after a shutdown).
        """
        with self.transport_lock:
            if self.transport is None or (not reconnect and not self.transport.is_active()):
                raise VmctlError("the SSH connection to the VM is down")
            if not self.transport.is_active():
                log.warning("SSH transport dropped; reconnecting")
                self.transport.close()
                self.transport.wait_until_connected(time.monotonic() + 10)
            transport = self.transport
        return transport.open_unix_channel(GUEST_ENGINE_SOCKET)

    def serve_engine(self) -> None:
        from vmctl.transport import idle_channel_usable

        # channels opened ahead: each client of engine.sock skips the open's round trip
        self.spares = SpareUpstreams(
            self.open_engine_channel,
            idle_channel_usable,
            _close,
            open_spare=lambda: self.open_engine_channel(reconnect=False),
        )
        if self.checked_channel is not None:
            self.checked_channel.settimeout(None)  # as every spare: clients may idle long
            self.spares.offer(self.checked_channel)  # the first client skips an open
            self.checked_channel = None
        self.spares.start()
        self.forwarder = UnixSocketForwarder(self.files.engine_socket, self.spares.get)
        self.forwarder.start()
        self.events = EventSubscriber(self.open_engine_channel, self.event_hooks)
        self.events.start()
        forwards = HostForwards(
            qmp_monitor(self.files.qmp_socket), on_change=lambda ports: self.report(ports=ports)
        )
        self.ports = PortPublisher(self.open_engine_channel, forwards)
        self.ports.start()
        self.report(RUNNING, ready_at=time.time(), message="")
        log.info("engine served at %s", self.files.engine_socket)

    def supervise(self) -> str:
        """Run until asked to stop or until QEMU goes away; say how it ended."""
        assert self.qemu is not None
        while not self.stop_event.wait(0.2):
            code = self.qemu.exit_code()
            if code is not None:
                if code == 0 or (
                    code == EXIT_UNKNOWN
                    and POWERED_OFF in ConsoleLog(self.files.serial_log).tail(5)
                ):
                    return "the guest powered off"
                return f"QEMU exited unexpectedly ({describe_exit(code)})"
        return "stopped"

    # -- shutdown -------------------------------------------------------------------

    def power_down(self) -> None:
        if self.qemu is not None:
            power_down(self.qemu, self.files.qmp_socket)

    def qmp(self, command: str) -> object:
        return qmp_command(self.files.qmp_socket, command)

    def shutdown(self) -> None:
        if self.status.state in (RUNNING, STARTING):
            self.report(STOPPING)
        if self.events is not None:
            self.events.stop()
            self.events = None
        if self.ports is not None:
            self.ports.stop()
            self.ports = None
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None
        if self.spares is not None:
            self.spares.close()
            self.spares = None
        if self.qemu is not None and self.qemu.exit_code() is None:
            self.power_down()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.qemu is not None and self.qemu.exit_code() is not None:
            remove_qemu_files(self.files)


def qmp_command(qmp_socket: Path, command: str) -> object:
    """Run a QMP command; its result, or None if QMP is gone (as with QEMU itself)."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    try:
        monitor = QEMUMonitorProtocol(str(qmp_socket))
        monitor.settimeout(5)
        monitor.connect()
        try:
            return monitor.cmd(command)
        finally:
            monitor.close()
    except Exception as e:
        log.warning("QMP %s failed: %s", command, e)
        return None


def power_down(qemu: QemuProcess, qmp_socket: Path) -> None:
    """ACPI power button through QMP, wait, then QMP quit, then kill."""
    if qemu.exit_code() is not None:
        return
    qmp_command(qmp_socket, "system_powerdown")
    deadline = time.monotonic() + POWERDOWN_TIMEOUT
    while time.monotonic() < deadline and qemu.exit_code() is None:
        time.sleep(0.1)
    if qemu.exit_code() is None:
        log.warning("guest did not power off within %.0f s; quitting QEMU", POWERDOWN_TIMEOUT)
        qmp_command(qmp_socket, "quit")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and qemu.exit_code() is None:
            time.sleep(0.1)
    if qemu.exit_code() is None:
        log.warning("QEMU still running; killing it")
        qemu.kill()


def remove_qemu_files(files: MachineFiles) -> None:
    """The files a QEMU of this machine leaves behind; only once it is gone."""
    for path in (files.qmp_socket, files.qemu_pid):
        path.unlink(missing_ok=True)


_held_locks: list[object] = []


def take_lock(path: Path) -> bool:
    """One host agent per machine: an flock held for the life of the process."""
    if sys.platform == "win32":
        return True
    import fcntl

    handle = open(path, "a")  # noqa: SIM115 - held open until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _held_locks.append(handle)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmctl-hostagent")
    parser.add_argument("--dir", required=True, type=Path, help="the machine directory")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    files = MachineFiles(args.dir.absolute())
    return HostAgent(Paths.from_env(), files).run()


if __name__ == "__main__":
    sys.exit(main())
