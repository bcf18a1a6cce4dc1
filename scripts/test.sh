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
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "tests and scripts read only inside the repository"
scripts/check-repo-paths.sh

step "test tools"
scripts/install-tools.sh

# The tests use LocalStack on 4566, and a second instance with injected failures on 4567 that
# they start themselves; stop whichever of them this run started.
up() { curl -fsS "http://127.0.0.1:$1/_localstack/health" >/dev/null 2>&1; }
to_stop=()
for port in 4566 4567; do up "$port" || to_stop+=("$port"); done
cleanup() {
  for port in "${to_stop[@]}"; do LOCALSTACK_PORT=$port localstack/stop.sh >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
step "localstack"
localstack/start.sh
step "moto's server (DynamoDB for the lease tests, which start it themselves)"
localstack/moto.sh >/dev/null

step "cargo test (unit, property, integration)"
cargo test --workspace --all-targets 2>&1 | tee target/cargo-test.log
grep -q "test result" target/cargo-test.log

step "parser tests in a lone copy of the repository"
scripts/test-fresh-copy.sh

step "Dockerfile lint"
scripts/lint-docker.sh
step "Helm chart"
scripts/test-chart.sh
