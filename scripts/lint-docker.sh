#!/usr/bin/env bash
# Lint the Dockerfile with hadolint at warning level: any warning or error fails. A rule that is
# ignored must be ignored inline in the Dockerfile, with the reason beside it.
# Ends with a summary line "hadolint: N passed, M failed".
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
"${script_dir}/install-tools.sh"

cd "${repo_root}"
if "${repo_root}/.tools/venv/bin/hadolint" --failure-threshold warning Dockerfile; then
    echo "hadolint: 1 passed, 0 failed"
else
    echo "hadolint: 0 passed, 1 failed"
    exit 1
fi
