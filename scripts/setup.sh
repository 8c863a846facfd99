#!/usr/bin/env bash
# All set-up on a fresh Debian machine, as root: system packages, then the
# project's npm dependencies (which builds the native modules and the
# TypeScript). Safe to run again; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_node_major=20
if ! command -v node >/dev/null 2>&1 || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt "$need_node_major" ]; then
  echo "setup: tapwall needs Node.js >= $need_node_major with npm (found: $(node --version 2>/dev/null || echo none))." >&2
  echo "setup: Debian's own nodejs package is older; install Node.js 20 or newer first." >&2
  exit 1
fi

# libpcap-dev: headers for the `cap` module; libyaml-dev: the addon's YAML reader; g++/make/python3: node-gyp;
# iproute2: namespaces, veths and TAPs for the tests and the demo; iputils-ping: ping inside them;
# ethtool: offloads off on veths that tapwall attaches to.
packages=(libpcap-dev libyaml-dev g++ make python3 iproute2 iputils-ping ethtool)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "setup: npm ci"
npm ci --no-audit --no-fund --loglevel=error
