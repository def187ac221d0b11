"""Key generation: formats every consumer (paramiko, sshd, ssh) reads, and safe file modes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from vmctl.errors import VmctlError
from vmctl.keys import (
    generate_keypair,
    known_hosts_line,
    parse_public_line,
    read_public_line,
    write_known_hosts,
)

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_private_0600_and_pub_line(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    line = generate_keypair(key, "vmctl client for dev")
    assert line.startswith("ssh-ed25519 AAAA")
    assert line.endswith(" vmctl client for dev")
    assert _mode(key) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (tmp_path / "id_ed25519.pub").read_text() == line + "\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_private_key_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_keypair(tmp_path / "k", "c")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600


@needs_ssh_keygen
def test_ssh_keygen_derives_the_same_public_key(tmp_path: Path) -> None:
    key = tmp_path / "host_key"
    line = generate_keypair(key, "host key")
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[:2] == line.split()[:2]


def test_paramiko_loads_the_private_key(tmp_path: Path) -> None:
    key = tmp_path / "k"
    line = generate_keypair(key, "c")
    loaded = paramiko.PKey.from_path(key)
    assert isinstance(loaded, paramiko.Ed25519Key)
    assert f"{loaded.get_name()} {loaded.get_base64()}" == " ".join(line.split()[:2])


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    key = tmp_path / "k"
    first = generate_keypair(key, "c")
    with pytest.raises(VmctlError, match="already exists"):
        generate_keypair(key, "c")
    assert read_public_line(key) == first
    second = generate_keypair(key, "c", overwrite=True)
    assert second != first
    assert read_public_line(key) == second


def test_read_public_line_from_private_and_pub(tmp_path: Path) -> None:
    key = tmp_path / "k"
    line = generate_keypair(key, "my comment")
    assert read_public_line(key) == line
    assert read_public_line(tmp_path / "k.pub") == line
    # Without the .pub the line is derived from the private key (no comment to keep).
    (tmp_path / "k.pub").unlink()
    assert read_public_line(key) == " ".join(line.split()[:2])


def test_read_public_line_ignores_a_stale_pub(tmp_path: Path) -> None:
    key = tmp_path / "k"
    line = generate_keypair(key, "c")
    other = generate_keypair(tmp_path / "other", "stale")
    (tmp_path / "k.pub").write_text(other + "\n")
    assert read_public_line(key) == " ".join(line.split()[:2])


def test_read_public_line_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(VmctlError, match="cannot read key"):
        read_public_line(tmp_path / "missing")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    with pytest.raises(VmctlError, match="not an unencrypted OpenSSH private key"):
        read_public_line(garbage)
    bad_pub = tmp_path / "bad.pub"
    bad_pub.write_text("ssh-ed25519 !!!notbase64")
    with pytest.raises(VmctlError, match="does not hold an OpenSSH public key"):
        read_public_line(bad_pub)


def test_parse_public_line_checks_the_embedded_type(tmp_path: Path) -> None:
    line = generate_keypair(tmp_path / "k", "c")
    key_type, blob = parse_public_line(line)
    assert key_type == "ssh-ed25519"
    assert blob[4:15] == b"ssh-ed25519"
    with pytest.raises(ValueError, match="does not describe"):
        parse_public_line("ssh-rsa " + line.split()[1])
    with pytest.raises(ValueError):
        parse_public_line("ssh-ed25519")


def test_known_hosts_line_and_file(tmp_path: Path) -> None:
    line = generate_keypair(tmp_path / "host", "the comment")
    entry = known_hosts_line("vmctl-dev", line)
    assert entry == "vmctl-dev " + " ".join(line.split()[:2])
    kh = tmp_path / "known_hosts"
    write_known_hosts(kh, "vmctl-dev", line)
    assert kh.read_text() == entry + "\n"
    assert _mode(kh) == 0o600


@pytest.mark.parametrize("alias", ["", "a b", "a,b", "*", "!x", "a?"])
def test_known_hosts_rejects_pattern_aliases(tmp_path: Path, alias: str) -> None:
    line = generate_keypair(tmp_path / "host", "c")
    with pytest.raises(ValueError):
        known_hosts_line(alias, line)


@needs_ssh_keygen
def test_ssh_keygen_finds_the_alias_in_known_hosts(tmp_path: Path) -> None:
    line = generate_keypair(tmp_path / "host", "c")
    kh = tmp_path / "known_hosts"
    write_known_hosts(kh, "vmctl-dev", line)
    found = subprocess.run(
        ["ssh-keygen", "-F", "vmctl-dev", "-f", str(kh)], capture_output=True, text=True
    )
    assert found.returncode == 0
    assert " ".join(line.split()[:2]) in found.stdout
