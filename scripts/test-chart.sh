#!/usr/bin/env bash
# Test the Helm chart at helm/shipper offline:
#   - helm lint --strict (with the required stream supplied, and with every test values file);
#   - helm template with the default values and with each non-default values file in
#     scripts/chart_tests/ (classic sidecar, IRSA, config file, endpoint, everything on); the
#     config-file case renders the project's example config, examples/shipper.toml;
#   - every rendered manifest validated with kubernetes-validate in strict mode against
#     Kubernetes 1.30 (knows native sidecars), and the classic sidecar also against 1.25, the
#     oldest version the chart supports;
#   - the sidecar wiring asserted by scripts/chart_tests/check_rendered.py;
#   - bad values rejected: by the schema (format: xml, compress, missing stream, a typo'd key) and
#     by the templates (grace period relation, native sidecar on Kubernetes 1.28, the socket input
#     the shipper does not have yet).
# Ends with a summary line "chart: N passed, M failed"; exits 1 if anything failed.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
"${script_dir}/install-tools.sh"

helm="${repo_root}/.tools/bin/helm"
python="${repo_root}/.tools/venv/bin/python"
kubernetes_validate="${repo_root}/.tools/venv/bin/kubernetes-validate"
chart="${repo_root}/helm/shipper"
cases="${script_dir}/chart_tests"
checker="${cases}/check_rendered.py"
example_config="${repo_root}/examples/shipper.toml"
validate_version="1.30.0"
oldest_version="1.25.0"

work_dir="$(mktemp -d)"
trap 'rm -rf "${work_dir}"' EXIT
# Keep helm away from the user's own config, cache and repositories.
export HELM_CONFIG_HOME="${work_dir}/helm-config" HELM_CACHE_HOME="${work_dir}/helm-cache" \
    HELM_DATA_HOME="${work_dir}/helm-data"

"${python}" -c 'import yaml' || { echo "chart: PyYAML is missing from the tools venv" >&2; exit 1; }

passed=0
failed=0
failures=()

pass() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() {
    failed=$((failed + 1))
    failures+=("$1")
    printf 'FAIL  %s\n' "$1"
    if [[ -n "${2:-}" && -s "$2" ]]; then sed 's/^/      /' "$2"; fi
}

# run_case NAME COMMAND...: a check that must succeed; its output is shown only on failure.
run_case() {
    local name="$1" log="${work_dir}/case.log"
    shift
    if "$@" >"${log}" 2>&1; then pass "${name}"; else fail "${name}" "${log}"; fi
}

# reject_case NAME PATTERN COMMAND...: a check that must fail with an error matching PATTERN.
reject_case() {
    local name="$1" pattern="$2" log="${work_dir}/case.log"
    shift 2
    if "$@" >"${log}" 2>&1; then
        fail "${name} (was accepted)" "${log}"
    elif grep -Eq -- "${pattern}" "${log}"; then
        pass "${name}"
    else
        fail "${name} (failed, but not with /${pattern}/)" "${log}"
    fi
}

# validate FILE VERSION: strict schema validation, and no resource left unchecked except CRDs
# (the ServiceMonitor), whose shape check_rendered.py asserts instead.
validate() {
    local file="$1" version="$2" out
    out="$("${kubernetes_validate}" --strict --kubernetes-version "${version}" "${file}" 2>&1)" || {
        printf '%s\n' "${out}"
        return 1
    }
    printf '%s\n' "${out}"
    if printf '%s\n' "${out}" | grep -E "^WARN" | grep -v "kind ServiceMonitor with api version monitoring.coreos.com/v1" | grep -q .; then
        echo "unexpected warning"
        return 1
    fi
}

# scenario NAME "HELM ARGS" "CHECKER ARGS" [EXTRA VERSION]: render, validate, assert.
scenario() {
    local name="$1" helm_args="$2" checker_args="$3" extra_version="${4:-}"
    local rendered="${work_dir}/${name}.yaml"
    # shellcheck disable=SC2086 # the argument strings are word lists on purpose
    if ! "${helm}" template shipper-test "${chart}" --namespace workers ${helm_args} \
        >"${rendered}" 2>"${work_dir}/render.err"; then
        fail "${name}: helm template" "${work_dir}/render.err"
        fail "${name}: kubernetes-validate ${validate_version} (not rendered)"
        fail "${name}: wiring (not rendered)"
        return
    fi
    pass "${name}: helm template"
    run_case "${name}: kubernetes-validate --strict ${validate_version}" validate "${rendered}" "${validate_version}"
    if [[ -n "${extra_version}" ]]; then
        run_case "${name}: kubernetes-validate --strict ${extra_version}" validate "${rendered}" "${extra_version}"
    fi
    # shellcheck disable=SC2086
    run_case "${name}: wiring" "${python}" "${checker}" "${rendered}" ${checker_args}
}

cd "${repo_root}"

# Lint.
run_case "lint --strict (stream set)" "${helm}" lint --strict "${chart}" --set shipper.stream=worker-logs
for values in "${cases}"/values-*.yaml; do
    extra=()
    [[ "${values}" == */values-config.yaml ]] && extra=(--set-file "config.toml=${example_config}")
    run_case "lint --strict ($(basename "${values}"))" "${helm}" lint --strict "${chart}" -f "${values}" "${extra[@]}"
done

# Render, validate, assert.
scenario default "--set shipper.stream=worker-logs" "--native --stream worker-logs"
scenario classic "-f ${cases}/values-classic.yaml --kube-version ${oldest_version}" \
    "--classic --stream worker-logs" "${oldest_version}"
scenario irsa "-f ${cases}/values-irsa.yaml" \
    "--native --stream worker-logs --role-arn arn:aws:iam::123456789012:role/worker-log-shipper"
scenario config "-f ${cases}/values-config.yaml --set-file config.toml=${example_config}" \
    "--native --config --config-file ${example_config}"
scenario endpoint "-f ${cases}/values-endpoint.yaml" \
    "--native --stream worker-logs --endpoint http://localstack.localstack.svc.cluster.local:4566 --aggregate --compress zstd"
scenario full "-f ${cases}/values-full.yaml" \
    "--native --stream worker-logs --service-monitor --scrape-annotations --metrics-port 9102"

# Bad values are rejected.
reject_case "schema rejects format: xml" "format.*(must be one of|enum)" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.format=xml
reject_case "schema rejects compress: brotli" "compress" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.compress=brotli
reject_case "schema rejects readFrom: middle" "readFrom" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.readFrom=middle
reject_case "schema requires the stream" "stream" "${helm}" template t "${chart}"
reject_case "schema rejects an unknown key" "additional propert" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.strem=x
reject_case "lint --strict fails without the stream" "stream" "${helm}" lint --strict "${chart}"
reject_case "grace period must stay below terminationGracePeriodSeconds" "terminationGracePeriodSeconds" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set terminationGracePeriodSeconds=25
reject_case "native sidecar refused on Kubernetes 1.28" "sidecar.native" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --kube-version 1.28.0
reject_case "socket input refused (not in this version)" "socket input is not available in this version" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true
reject_case "socket input refused in config mode too" "socket input is not available in this version" \
    "${helm}" template t "${chart}" --set-file "config.toml=${example_config}" --set shipper.socket.enabled=true

if ((failed > 0)); then
    printf '\nfailed:\n'
    printf '  %s\n' "${failures[@]}"
fi
echo "chart: ${passed} passed, ${failed} failed"
((failed == 0))
