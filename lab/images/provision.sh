#!/bin/sh
# Provision a Debian 12 (bookworm) machine to run blackhole-lab with real IPVS and netem.
#
# One script, two callers (tests/vm/test_vm_files.py checks they are the same file):
#   - lab.images.vm (make vm-test) runs it in the chroot of the VM image it builds, with
#     BHL_REQUIREMENTS and BHL_WHEELHOUSE pointing at the host-built wheels (offline pip);
#   - the Vagrantfile runs it on a Debian box, where the project is mounted at /vagrant.
# Idempotent: apt and pip install only what is missing.
set -eu

PACKAGES="linux-image-amd64 kmod udev ipvsadm iproute2 nftables python3-nftables conntrack tcpdump procps
  mariadb-server mariadb-client nginx-light python3 python3-venv ca-certificates make"
VENV=/opt/blackhole-lab/venv

export DEBIAN_FRONTEND=noninteractive
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' \
    || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing
fi
# the lab runs its own MariaDB and NGINX servers in namespaces: not the distribution's
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now mariadb nginx 2>/dev/null || true
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# libnftables' Python binding is Debian's (not on PyPI): link that one module into the venv
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/nftables" ] || ln -sfn /usr/lib/python3/dist-packages/nftables "$site/nftables"
if [ -n "${BHL_REQUIREMENTS:-}" ]; then
  # the VM image: the host's wheels, no network
  "$VENV/bin/pip" install -q --no-index --find-links "$BHL_WHEELHOUSE" -r "$BHL_REQUIREMENTS"
elif [ -f /vagrant/pyproject.toml ]; then
  "$VENV/bin/pip" install -q -e '/vagrant[dev]'
fi
echo "provision: done ($(uname -r), $("$VENV/bin/python" --version))"
