#!/bin/sh
# Installs everything vmctl needs on a Debian or Ubuntu machine, then vmctl itself
# (with its test tools) into ./.venv. Safe to run again.
set -eu
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# QEMU runs the VM; apt (already there) builds the guest image from Debian packages,
# with Debian's archive keyring to check them; ssh for `vmctl machine ssh`; curl for
# the quick check in the README. busybox-static, iproute2 and nftables let the engine
# run natively on a Linux host (and its tests use them): the busybox image is built from
# the host's busybox, and the default bridge uses nft for NAT. The tests start Debian's
# docker-registry on 127.0.0.1 (htpasswd from apache2-utils, a test CA from openssl) and
# check our pushes and pulls against skopeo.
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    qemu-system-x86 qemu-utils openssh-client curl ca-certificates debian-archive-keyring \
    python3 python3-venv python3-pip busybox-static iproute2 nftables \
    docker-registry skopeo apache2-utils openssl

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# The editable install leaves our own modules uncompiled. Compile them now, so no run
# pays for it (or skips writing the cache under PYTHONDONTWRITEBYTECODE): ~0.15 s at
# every `vmctl machine start`, and as much again in its host agent.
.venv/bin/python -m compileall -q -j 0 vmctl agent images
echo "installed: $(.venv/bin/vmctl --version) in $(pwd)/.venv"
