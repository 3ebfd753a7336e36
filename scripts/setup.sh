#!/usr/bin/env bash
# Prepare this machine (Debian 12, as root) for ktdeploy's lab and tests: host packages, .venv.
# Idempotent: a second run installs nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# The lab: mmdebstrap+eatmydata build the golden rootfs (debootstrap is the fallback),
# systemd-container boots hosts, apt-cacher-ng is their apt proxy.
PACKAGES=(mmdebstrap eatmydata debootstrap systemd-container apt-cacher-ng
          iproute2 openssh-client python3-venv)

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages: ${PACKAGES[*]})" >&2
  exit 2
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The lab runs its own apt-cacher-ng on 10.203.0.1:3142; a system one would hold the port.
  if [[ " ${missing[*]} " == *" apt-cacher-ng "* ]] && command -v systemctl >/dev/null \
     && systemctl is-active -q apt-cacher-ng 2>/dev/null; then
    echo "setup.sh: stopping and disabling the system apt-cacher-ng service (the lab runs its own)"
    systemctl disable --now apt-cacher-ng
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.ktdeploy-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $PWD"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi
echo "setup.sh: ready (.venv/bin/ktdeploy)"
