#!/usr/bin/env bash
# The demo: a small data center live between network namespaces (traffic, a
# refreshing table, a quarantine through the API midway), then the policy
# checker and tracer on the example policies, and the classifier and
# flow-cache benchmarks. DEMO_SECONDS sets the live part's length (default 60;
# `npx tapwall demo` alone runs until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
tw() {
  local shown="" a
  for a in "$@"; do case "$a" in *" "*) shown+=" '$a'" ;; *) shown+=" $a" ;; esac; done
  printf '\n$ tapwall%s\n' "$shown"
  node bin/tapwall.js "$@"
}

echo "== 0. Live: VMs as network namespaces on TAP devices, tapwall between them"
tw demo --duration "${DEMO_SECONDS:-60}"

echo; echo "== 1. Check the example policies"
tw check examples/three-tier.yaml
tw check examples/dual-stack.json

echo; echo "== 2. A policy with mistakes: every problem, with file, line, column and path"
tw check examples/broken.yaml || echo "(exit code $?: the policy is invalid)"

echo; echo "== 3. Trace packets through the three-tier policy"
tw trace examples/three-tier.yaml 'tcp 203.0.113.9:50000 -> 10.0.1.11:443'
tw trace examples/three-tier.yaml 'tcp 10.0.2.21:40000 -> 10.0.3.31:5432'
tw trace examples/three-tier.yaml 'tcp 10.0.1.11:40000 -> 10.0.3.31:5432'
tw trace examples/three-tier.yaml --from web-1 'tcp 10.0.3.31:40000 -> 10.0.2.21:8080'
tw trace examples/dual-stack.json 'tcp [2001:db8::5]:40000 -> [fd00:6::11]:443'

echo; echo "== 4. The rule trie against a linear scan, 4k ClassBench firewall rules"
tw bench classify data/classbench/4k/fw1_seed_1.rules data/classbench/4k/fw1_seed_1.trace --rounds 3

echo; echo "== 5. The flow cache: later packets of a connection skip classification"
tw bench flow --quick
