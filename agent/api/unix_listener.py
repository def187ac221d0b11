"""Creating the engine's unix socket safely: private directory, no stale file, mode 0600."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from agent.logsetup import get_logger

log = get_logger(__name__)

BACKLOG = 128


class ListenerError(Exception):
    """The socket cannot be created; the message says why (another engine, a bad path…)."""


def open_unix_listener(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """Bind and listen on ``path``; returns the socket and the (st_dev, st_ino) of its file.

    The parent directory is created with mode 0700 if missing. A socket file nobody answers
    on (left by a crashed agent) is replaced; one somebody answers on is not. The umask is
    tight while binding, so the socket is 0600 from the moment it exists.
    """
    parent = os.path.dirname(os.path.abspath(path))
    old_umask = os.umask(0o077)  # process-wide, so only at start-up, before any thread
    try:
        if not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=0o700)
                log.info("created %s", parent)
            except FileExistsError:
                pass
            except OSError as error:
                raise ListenerError(f"cannot create {parent}: {error.strerror or error}") from None
        _remove_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)  # umask already did it; this documents the intent
            listener.listen(BACKLOG)
            info = os.stat(path)
        except OSError as error:
            listener.close()
            raise ListenerError(f"cannot listen on {path}: {error.strerror or error}") from None
    finally:
        os.umask(old_umask)
    return listener, (info.st_dev, info.st_ino)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenerError(f"cannot check whether {path} is in use: {error}") from None
    else:
        raise ListenerError(f"{path} is in use: another engine is listening on it (stop it first)")
    finally:
        probe.close()
    log.info("removing stale socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_socket_file(path: str, identity: tuple[int, int]) -> None:
    """Delete the socket file, unless it has been replaced by someone else's since we bound."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if (info.st_dev, info.st_ino) != identity:
        log.warning("%s now belongs to another process; leaving it", path)
        return
    os.unlink(path)
