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
cargo test --workspace --no-fail-fast "$@" -- --test-threads="${STRATA_TEST_THREADS:-2}"
