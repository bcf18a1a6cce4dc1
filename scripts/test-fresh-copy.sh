#!/usr/bin/env bash
# Prove that the tests read nothing outside the repository: export the last commit (what a
# `git clone` gets) into an empty temporary directory, with no sibling directories, and run the
# parser tests there (they read the Celery fixture). The build reuses the usual target directory,
# so only this crate is compiled again, not its dependencies.
#
# Usage: scripts/test-fresh-copy.sh [CARGO TEST ARGS...]   (default: --lib parse::)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

command -v git >/dev/null && git rev-parse --verify -q HEAD >/dev/null ||
    { echo "test-fresh-copy: needs a git checkout with a commit" >&2; exit 1; }

args=("$@")
((${#args[@]})) || args=(--lib parse::)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
copy="$work/shipper"
mkdir "$copy"
git archive --format=tar HEAD | tar -x -C "$copy"
# Nothing beside the copy: a path that climbs out of it finds nothing.
[[ "$(ls -A "$work")" == "shipper" ]]

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
echo "test-fresh-copy: $(git rev-parse --short HEAD) in $copy: cargo test ${args[*]}"
(cd "$copy" && cargo test "${args[@]}")
