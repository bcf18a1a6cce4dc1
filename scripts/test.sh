#!/usr/bin/env bash
# Every test: formatting and lints, unit and property tests, LocalStack-backed integration and crash
# tests, and the chart and Dockerfile checks. LocalStack is started here (and stopped again if this
# script started it); the integration tests also start it themselves when run alone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

step "test tools"
scripts/install-tools.sh

started_localstack=0
if ! curl -fsS "http://127.0.0.1:${LOCALSTACK_PORT:-4566}/_localstack/health" >/dev/null 2>&1; then
  started_localstack=1
fi
cleanup() { if [ "$started_localstack" = 1 ]; then localstack/stop.sh || true; fi; }
trap cleanup EXIT
step "localstack"
localstack/start.sh

step "cargo test (unit, property, integration)"
cargo test --all-targets 2>&1 | tee target/cargo-test.log
grep -q "test result" target/cargo-test.log

step "Dockerfile lint"
scripts/lint-docker.sh
step "Helm chart"
scripts/test-chart.sh
