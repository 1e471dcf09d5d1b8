#!/usr/bin/env bash
# Builds the workspace and runs every test: unit tests and the end-to-end
# tests in tests/ (real registries, real mounts, rootless runs as strata-test).
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -p strata-e2e   # extra arguments go to `cargo test`
#
# The end-to-end tests need root (fixtures are built with umoci as root, and
# rootless cases switch to the strata-test user): run scripts/setup.sh first.
# STRATA_TEST_THREADS sets how many tests of one binary run at once (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "warning: not root; the end-to-end tests in tests/ need root and will fail" >&2
fi

# The e2e tests run target/debug/strata, which `cargo test` alone does not build.
cargo build --workspace --all-targets
log=$(mktemp /tmp/strata-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" -- --test-threads="${STRATA_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, g }' "$log"
exit "$status"
