#!/usr/bin/env bash
# Regenerate localstack/requirements.lock, localstack/client.lock and localstack/moto.lock from
# their .in files.
# Dependencies are resolved as of LocalStack 4.9.2's release (newer ones break it on Python 3.11).
# Uses the uv that localstack/start.sh installs into .localstack/tools (or uv from PATH).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV="$ROOT/.localstack/tools/uv/bin/uv"
[[ -x "$UV" ]] || UV="$(command -v uv)" || { echo "lock.sh: uv not found; run localstack/start.sh once" >&2; exit 1; }
EXCLUDE_NEWER="2025-10-15"
cd "$ROOT/localstack"
for name in requirements client; do
    "$UV" pip compile --quiet --universal --python-version 3.11 --exclude-newer "$EXCLUDE_NEWER" \
        --generate-hashes --no-header "$name.in" -o "$name.lock"
done
# moto's server (DynamoDB for the lease tests) is not tied to LocalStack's release date.
"$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes --no-header \
    moto.in -o moto.lock
