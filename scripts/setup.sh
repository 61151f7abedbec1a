#!/usr/bin/env bash
# Installs everything Megalith needs on a fresh Debian machine, then builds it.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential python3 libopenblas-dev libdnnl-dev openmpi-bin libopenmpi-dev python3-torch python3-numpy chromium)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages present"
fi

# Build the addon against the installed Node headers when they exist (no header download).
if [ -f /usr/include/node/node_api.h ]; then export npm_config_nodedir=/usr; fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
npm run build:ts
echo "setup: done (native addon: native/build/Release/megalith_native.node)"
