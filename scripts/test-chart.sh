#!/usr/bin/env bash
# Test the Helm chart at helm/shipper offline:
#   - helm lint --strict with the chart's default values (they must lint clean: the one required
#     value, shipper.stream, is enforced with `required` at install and template time, not by the
#     schema), and with every helm/shipper/ci/*-values.yaml (the value sets chart-testing's
#     `ct lint` and `ct install` use: stream set, classic sidecar, IRSA, config file inline,
#     endpoint, everything on), plus the project's example config, examples/shipper.toml, through
#     scripts/chart_tests/values-config.yaml (--set-file, which a ci values file cannot do);
#   - helm template with each of those value sets;
#   - every rendered manifest validated with kubernetes-validate in strict mode against
#     Kubernetes 1.30 (knows native sidecars), and the classic sidecar also against 1.25, the
#     oldest version the chart supports;
#   - the sidecar wiring asserted by scripts/chart_tests/check_rendered.py, with the expectations
#     of each ci values file listed below (a ci file without them fails the run), and of the
#     example config with the socket input on;
#   - bad values rejected: by `required` (helm template with the defaults, no stream), by the
#     schema (format: xml, compress, a malformed stream name, a typo'd key, socket framing, mode
#     and spool size; also under lint) and by the templates (grace period relation, native sidecar
#     on Kubernetes 1.28, no input at all, a spool larger than the data volume, a socket mode the
#     worker cannot connect through, a socket path longer than the kernel takes, consumer replicas without a lease table).
# Ends with a summary line "chart: N passed, M failed"; exits 1 if anything failed.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
"${script_dir}/install-tools.sh"

helm="${repo_root}/.tools/bin/helm"
python="${repo_root}/.tools/venv/bin/python"
kubernetes_validate="${repo_root}/.tools/venv/bin/kubernetes-validate"
chart="${repo_root}/helm/shipper"
ci_dir="${chart}/ci"
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

# scenario NAME "HELM ARGS" "CHECKER ARGS" [EXTRA VERSION]: render, validate, assert. CHECKER
# ARGS "-" means no wiring expectations are known, which is a failure of its own.
scenario() {
    local name="$1" helm_args="$2" checker_args="$3" extra_version="${4:-}"
    local rendered="${work_dir}/${name//\//_}.yaml"
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
    if [[ "${checker_args}" == "-" ]]; then
        fail "${name}: wiring (no expectations for it in scripts/test-chart.sh)"
        return
    fi
    # shellcheck disable=SC2086
    run_case "${name}: wiring" "${python}" "${checker}" "${rendered}" ${checker_args}
}

# config_of VALUES FILE: write the config.toml that VALUES sets to FILE (for --config-file).
config_of() {
    "${python}" -c '
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as handle:
    values = yaml.safe_load(handle) or {}
toml = (values.get("config") or {}).get("toml") or ""
if not toml:
    sys.exit(sys.argv[1] + " sets no config.toml")
with open(sys.argv[2], "w", encoding="utf-8") as handle:
    handle.write(toml)
' "$1" "$2"
}

# What each helm/shipper/ci/NAME-values.yaml must render to, as "HELM ARGS|CHECKER ARGS|EXTRA
# VERSION": helm arguments besides -f, check_rendered.py arguments (@CONFIG@ stands for the
# values file's config.toml, extracted), and a second Kubernetes version to validate against.
declare -A ci_expect=(
    [default]="|--native --stream worker-logs|"
    [classic]="--kube-version ${oldest_version}|--classic --stream worker-logs|${oldest_version}"
    [irsa]="|--native --stream worker-logs --role-arn arn:aws:iam::123456789012:role/worker-log-shipper|"
    [config]="|--native --config --config-file @CONFIG@|"
    [endpoint]="|--native --stream worker-logs --endpoint http://localstack.localstack.svc.cluster.local:4566 --aggregate --compress zstd|"
    [full]="|--native --stream worker-logs --service-monitor --scrape-annotations --metrics-port 9102|"
    [socket]="|--native --stream worker-logs --socket-path /run/shipper/shipper.sock --spool-max-bytes 536870912|"
    [abstract]="|--native --stream worker-logs --socket-abstract shipper-logs --framing python|"
    [consumer-leases]="|--native --stream worker-logs --consumer-lease-table worker-logs-leases --consumer-replicas 3|"
)

cd "${repo_root}"

ci_files=("${ci_dir}"/*-values.yaml)
[[ -e "${ci_files[0]}" ]] || { echo "chart: no ${ci_dir}/*-values.yaml" >&2; exit 1; }

# Lint: the defaults alone must lint clean, and so must every ci values file.
run_case "lint --strict (defaults)" "${helm}" lint --strict "${chart}"
for values in "${ci_files[@]}"; do
    run_case "lint --strict (ci/$(basename "${values}"))" "${helm}" lint --strict "${chart}" -f "${values}"
done
run_case "lint --strict (values-config.yaml + examples/shipper.toml)" "${helm}" lint --strict "${chart}" \
    -f "${cases}/values-config.yaml" --set-file "config.toml=${example_config}"

# Render, validate, assert: every ci values file, then the example config file.
for values in "${ci_files[@]}"; do
    case_name="$(basename "${values}" -values.yaml)"
    IFS="|" read -r helm_extra checker_args extra_version <<<"${ci_expect[${case_name}]:-|-|}"
    if [[ "${checker_args}" == *@CONFIG@* ]]; then
        config_file="${work_dir}/${case_name}-config.toml"
        if ! config_of "${values}" "${config_file}" >"${work_dir}/config.err" 2>&1; then
            fail "ci/${case_name}: config.toml" "${work_dir}/config.err"
            continue
        fi
        checker_args="${checker_args//@CONFIG@/${config_file}}"
    fi
    scenario "ci/${case_name}" "-f ${values} ${helm_extra}" "${checker_args}" "${extra_version}"
done
scenario example-config "-f ${cases}/values-config.yaml --set-file config.toml=${example_config}" \
    "--native --config --config-file ${example_config}"
scenario example-config+socket \
    "-f ${cases}/values-config.yaml --set-file config.toml=${example_config} --set shipper.socket.enabled=true" \
    "--native --config --config-file ${example_config} --socket-path /run/shipper/shipper.sock"
scenario classic+socket \
    "-f ${ci_dir}/socket-values.yaml --set sidecar.native=false --set shipper.socket.mode=0600 --set worker.securityContext.runAsUser=65532 --kube-version ${oldest_version}" \
    "--classic --stream worker-logs --socket-path /run/shipper/shipper.sock --socket-mode 0600 --spool-max-bytes 536870912" \
    "${oldest_version}"

# Bad values are rejected.
reject_case "schema rejects format: xml" "format.*(must be one of|enum)" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.format=xml
reject_case "schema rejects compress: brotli" "compress" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.compress=brotli
reject_case "schema rejects readFrom: middle" "readFrom" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.readFrom=middle
reject_case "template with the defaults requires the stream" \
    "shipper\.stream is required: the Kinesis stream to ship to" "${helm}" template t "${chart}"
reject_case "schema rejects a malformed stream name" "stream.*(pattern|match)" \
    "${helm}" template t "${chart}" --set "shipper.stream=worker logs"
reject_case "schema rejects an unknown key" "additional propert" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.strem=x
reject_case "lint --strict still applies the schema" "format.*(must be one of|enum)" \
    "${helm}" lint --strict "${chart}" --set shipper.format=xml
reject_case "grace period must stay below terminationGracePeriodSeconds" "terminationGracePeriodSeconds" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set terminationGracePeriodSeconds=25
reject_case "native sidecar refused on Kubernetes 1.28" "sidecar.native" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --kube-version 1.28.0
reject_case "no paths and no socket refused" "shipper\.paths is empty and shipper\.socket\.enabled is false" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set-json 'shipper.paths=[]'
reject_case "schema rejects socket framing: json" "framing.*(must be one of|enum)" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.socket.framing=json
reject_case "schema rejects an unquoted socket mode" "socket/mode.*want string" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.socket.mode=660
reject_case "schema rejects a socket mode that is not octal" "socket/mode.*(pattern|match)" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.socket.mode=0680
reject_case "schema rejects a spool below 1 MiB" "spoolMaxBytes" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.socket.spoolMaxBytes=65536
reject_case "schema rejects a socket file name with a slash" "fileName.*(pattern|match)" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.socket.fileName=a/b.sock
reject_case "spool larger than the data volume refused" \
    "spoolMaxBytes \(600000000 bytes\) must be below shipper\.data\.sizeLimit \(512Mi, 536870912 bytes\)" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.socket.spoolMaxBytes=600000000
reject_case "default spool larger than a small data volume refused" \
    "spoolMaxBytes \(0: the shipper's default, 268435456 bytes\) must be below shipper\.data\.sizeLimit \(0\.2Gi" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.data.sizeLimit=0.2Gi
run_case "spool not checked against sizeLimit with a volume of one's own" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.data.sizeLimit=1Mi --set shipper.data.volume.persistentVolumeClaim.claimName=shipper-data
reject_case "socket mode the worker cannot connect through refused (no fsGroup)" \
    "socket\.mode 0660 does not let the worker connect" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set podSecurityContext.fsGroup=null
reject_case "socket mode without group write refused" "socket\.mode 0640 does not let the worker connect" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set shipper.socket.mode=0640
run_case "no fsGroup, worker in the shipper's group: renders" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set podSecurityContext.fsGroup=null --set worker.securityContext.runAsGroup=65532
reject_case "socket path longer than 107 bytes refused" "has 113 bytes; a unix socket path has at most 107" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set shipper.socket.enabled=true \
    --set "socketDir.mountPath=/$(printf 'a%.0s' {1..99})"
reject_case "consumer replicas refused without a lease table" "consumer.replicas > 1 needs consumer.leaseTable" \
    "${helm}" template t "${chart}" --set shipper.stream=worker-logs --set consumer.enabled=true \
    --set consumer.stream=worker-logs --set consumer.deliveryStream=worker-logs-s3 --set consumer.replicas=2

if ((failed > 0)); then
    printf '\nfailed:\n'
    printf '  %s\n' "${failures[@]}"
fi
echo "chart: ${passed} passed, ${failed} failed"
((failed == 0))
