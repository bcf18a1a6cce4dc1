#!/usr/bin/env bash
# Fail when a test or script reads a path outside the repository: a fresh clone has nothing next
# to it. Looks at the files of src/, tests/, scripts/, localstack/, .ci/ and the Makefile for
#
#   - a path that climbs out: "../x", '..', "$dir/..", join(ROOT, ".."), CARGO_MANIFEST_DIR/..;
#     the one allowed climb is a script's own directory's parent
#     ($(dirname "${BASH_SOURCE[0]}")/.. or ${script_dir}/..), which is the repository root;
#   - the fixtures directory that used to sit beside the repository (named in `outside`).
#
# The patterns are checked against known good and bad lines first, so a broken pattern cannot
# pass everything. scripts/test-fresh-copy.sh proves the same by running tests in a lone copy.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# A `..` path component: `../` at the start of a path, `/..` at the end of one, or `".."` as an
# argument of its own (a path join). Rust's `..` (ranges, patterns) has no slash or quotes.
climb='(^|[/"'\''[:space:]=(])\.\./|/\.\.([/"'\'')[:space:]]|$)|[(,][[:space:]]*["'\'']\.\.["'\'']'
# A script's own directory's parent: the repository root.
allowed='(BASH_SOURCE\[0\]}"\)|\$\{?script_dir}?)/\.\.["'\'')]'
# Spelled in two parts so that this script does not match itself.
outside="$(printf '%s/%s' shared fixtures)"

# offending FILE...: print the lines that read outside the repository.
offending() {
    { grep -nHE "$climb" "$@" 2>/dev/null || true; } | grep -vE "$allowed" || true
    grep -nHE "$outside" "$@" 2>/dev/null || true
}

self_test() {
    local dir bad good
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' RETURN
    cat >"$dir/bad" <<'BAD'
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../sibling/x.log"))
FIXTURE = os.path.join(ROOT, "..", "other", "worker.log")
cat ../other/file
data="$root/../data"
repo_root().join("../elsewhere/file")
BAD
    printf 'path = "/work/%s/celery/worker.log"\n' "$outside" >>"$dir/bad"
    cat >"$dir/good" <<'GOOD'
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
/// Records "r0".."rN", each covering 10 bytes.
for record in ready.drain(..) {
    Err(Error::TooLarge { .. })
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "celery", "worker.log")
GOOD
    bad="$(offending "$dir/bad" | cut -d: -f2 | sort -un | wc -l)"
    good="$(offending "$dir/good")"
    if [[ "$bad" != "$(wc -l <"$dir/bad")" || -n "$good" ]]; then
        echo "check-repo-paths: the patterns are broken: caught $bad of $(wc -l <"$dir/bad") bad lines; flagged good lines:" >&2
        printf '%s\n' "$good" >&2
        exit 2
    fi
}
self_test

# The repository's files (tracked or new, not ignored); without git (an exported copy), every file.
list_files() {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files --cached --others --exclude-standard -- src tests scripts localstack .ci Makefile
    else
        find src tests scripts localstack .ci Makefile -type f 2>/dev/null
    fi
}
mapfile -t files < <(
    list_files | grep -vE '^tests/fixtures/|^scripts/check-repo-paths\.sh$|__pycache__' |
        while IFS= read -r file; do [[ -f "$file" ]] && printf '%s\n' "$file"; done
)
((${#files[@]})) || { echo "check-repo-paths: found no files to check in $root" >&2; exit 1; }
found="$(offending "${files[@]}")"
if [[ -n "$found" ]]; then
    echo "check-repo-paths: these lines read outside the repository (a fresh clone has nothing beside it):" >&2
    printf '%s\n' "$found" >&2
    exit 1
fi
echo "check-repo-paths: ${#files[@]} files read only inside the repository"
