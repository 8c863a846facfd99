#!/usr/bin/env bash
# The whole test suite: build, run every test file, and end with the totals
# as one line `N passed, N failed` (tap's own summary is `# { total, pass }`).
set -uo pipefail
cd "$(dirname "$0")/.."

if ! npm run build --silent; then
  echo "the TypeScript build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

# A real Prometheus for test/metrics-prometheus.test.ts (Debian's package; the test starts it on loopback
# with its own data folder and port, and stops it; nothing here starts it as a service).
if ! command -v prometheus >/dev/null 2>&1; then
  echo "test: installing Debian's prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
    || echo "test: could not install prometheus; its test will fail"
fi

# etcd for the cluster tests (Debian's etcd-server; the tests start their own members on loopback
# ports with their own data folders and stop them; nothing here starts it as a service).
# openssl makes the certificates of the TLS cluster test.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "test: installing Debian's etcd-server, etcd-client and openssl"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends etcd-server etcd-client openssl >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server etcd-client openssl >/dev/null; } \
    || echo "test: could not install etcd; the cluster tests will fail"
fi

# QEMU, busybox-static and Debian's cloud kernel for test/qemu-guests.test.ts.
./scripts/guest-assets.sh || echo "test: could not prepare the QEMU guests; their test will fail"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
npx tap --reporter=tap --no-color "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

summary=$(grep -E '^# \{ total: ' "$log" | tail -n 1)
if [ -z "$summary" ]; then
  echo "the test runner printed no totals (exit code $rc)"
  echo "0 passed, 1 failed"
  exit 1
fi
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
total=$(sed -nE 's/.*total: ([0-9]+).*/\1/p' <<<"$summary")
pass=${pass:-0}
fail=${fail:-0}
# Anything counted in the total but neither passed nor failed (todo, skip) is
# reported as failed: a skipped check is a defect here.
other=$(( total - pass - fail ))
if [ "$other" -gt 0 ]; then
  echo "$other tests were skipped or left todo"
  fail=$(( fail + other ))
fi
# A test that asserted nothing is a failure too: it cannot fail, or the runner lost its failure (node-tap
# drops a failing assertion whose message holds U+2028 and reports its test as passing, "no tests found").
empty=$(grep -c '# no tests found' "$log")
if [ "$empty" -gt 0 ]; then
  echo "$empty tests asserted nothing: each cannot fail, or its failure was lost"
  grep -B2 '# no tests found' "$log" | grep -E '# Subtest|ok ' | head -20
  fail=$(( fail + empty ))
fi
if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$rc" -eq 0 ]
