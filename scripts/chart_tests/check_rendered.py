"""Assert the sidecar wiring in manifests rendered by `helm template` from helm/shipper.

Usage: check_rendered.py RENDERED.yaml [--native|--classic] [--role-arn ARN]
       [--config [--config-file FILE]] [--stream NAME] [--endpoint URL] [--aggregate]
       [--compress none|gzip|zstd] [--service-monitor] [--metrics-port N] [--scrape-annotations]
       [--socket-path PATH | --socket-abstract NAME] [--framing auto|python|syslog|lines]
       [--socket-mode OCTAL] [--spool-max-bytes N]
       [--consumer-lease-table NAME [--consumer-replicas N]]

--config-file: the file given to helm with --set-file config.toml=FILE; the ConfigMap must carry
it unchanged, and every input path in it must lie in the log directory both containers mount.

--socket-path, --socket-abstract: the socket input is on, listening on that file or Linux abstract
name; the shipper must get exactly one --socket flag for it, the worker must be told the address
(LOG_SHIPPER_SOCKET) and, for a file, both containers must mount the socket directory and share a
group that the socket mode lets connect. Without either, no socket flag or setting may be rendered.
--socket-mode and --spool-max-bytes: the expected SHIPPER_SOCKET_MODE (default 0660) and
SHIPPER_SPOOL_MAX_BYTES (default: not set); the spool must fit in the data emptyDir's sizeLimit.

Prints one line per failed expectation and exits 1 if any failed, 0 otherwise. Needs PyYAML
(the tools venv has it through kubernetes-validate).
"""

import argparse
import re
import sys
import tomllib

import yaml

IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
SHIPPER_UID = 65532
SOCKET_ENV = "LOG_SHIPPER_SOCKET"
# The shipper's spool limit when SHIPPER_SPOOL_MAX_BYTES is not set.
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
QUANTITY_FACTORS = {
    "": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


class Checker:
    def __init__(self):
        self.failures = []

    def check(self, condition, message):
        if not condition:
            self.failures.append(message)
        return bool(condition)


def env_of(container):
    return {item["name"]: item.get("value") for item in container.get("env") or []}


def mounts_of(container):
    return {mount["name"]: mount for mount in container.get("volumeMounts") or []}


def seconds(duration):
    match = re.fullmatch(r"(\d+)s", duration or "")
    return int(match.group(1)) if match else None


def quantity_bytes(quantity):
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(quantity))
    if not match or match.group(2) not in QUANTITY_FACTORS:
        return None
    return float(match.group(1)) * QUANTITY_FACTORS[match.group(2)]


def socket_flags(shipper_args):
    """The values of --socket URL and --socket=URL, before any "--"."""
    args = shipper_args[:shipper_args.index("--")] if "--" in shipper_args else shipper_args
    urls = []
    for index, arg in enumerate(args):
        if arg == "--socket" and index + 1 < len(args):
            urls.append(args[index + 1])
        elif arg.startswith("--socket="):
            urls.append(arg.split("=", 1)[1])
    return urls


def check_socket(c, args, spec, worker, shipper, volumes):
    """The socket input: flag, worker address, shared mount and group, mode, spool size."""
    env, worker_env = env_of(shipper), env_of(worker)
    urls = socket_flags(shipper.get("args") or [])
    spool_env = env.get("SHIPPER_SPOOL_MAX_BYTES")
    if not (args.socket_path or args.socket_abstract):
        c.check(not urls, f"a socket flag is rendered while the socket is off: {urls}")
        for name in ("SHIPPER_SOCKET_MODE", "SHIPPER_SPOOL_MAX_BYTES"):
            c.check(name not in env, f"{name} is set while the socket is off")
        c.check(SOCKET_ENV not in worker_env, f"worker: {SOCKET_ENV} is set while the socket is off")
        return
    if args.socket_abstract:
        url, address = f"unix://@{args.socket_abstract}", f"@{args.socket_abstract}"
    else:
        url, address = f"unix://{args.socket_path}", args.socket_path
    url += f"?framing={args.framing}"
    c.check(urls == [url], f"socket: the shipper's socket flags are {urls}, expected [{url!r}]")
    c.check(worker_env.get(SOCKET_ENV) == address,
            f"worker: {SOCKET_ENV} is {worker_env.get(SOCKET_ENV)!r}, expected {address!r}")
    mode = env.get("SHIPPER_SOCKET_MODE")
    c.check(mode == args.socket_mode, f"socket: SHIPPER_SOCKET_MODE is {mode!r}, expected {args.socket_mode!r}")
    expected_spool = None if args.spool_max_bytes is None else str(args.spool_max_bytes)
    c.check(spool_env == expected_spool,
            f"socket: SHIPPER_SPOOL_MAX_BYTES is {spool_env!r}, expected {expected_spool!r}")
    if args.socket_path:
        socket_dir = args.socket_path.rsplit("/", 1)[0]
        shipper_mount = mounts_of(shipper).get("socket") or {}
        c.check(shipper_mount.get("mountPath") == socket_dir and not shipper_mount.get("readOnly"),
                f"socket: the shipper does not mount the socket directory {socket_dir} read-write")
        c.check((mounts_of(worker).get("socket") or {}).get("mountPath") == socket_dir,
                f"socket: the worker does not mount the socket directory {socket_dir}")
        c.check(len(args.socket_path.encode()) <= 107, f"socket: {args.socket_path} is longer than 107 bytes")
        # The socket file takes the group of the fsGroup'd emptyDir, a group every container of
        # the pod has; without an fsGroup only a world-writable mode lets the worker in.
        pod_security = spec.get("securityContext") or {}
        others_write = mode is not None and int(mode, 8) & 0o002
        c.check("fsGroup" in pod_security or others_write,
                f"socket: no pod fsGroup, and mode {mode} does not let the worker connect")
    # The spool lives in the data volume: it must fit in the emptyDir's sizeLimit.
    size_limit = ((volumes.get("data") or {}).get("emptyDir") or {}).get("sizeLimit")
    if size_limit is not None:
        limit = quantity_bytes(size_limit)
        spool = int(spool_env) if spool_env else DEFAULT_SPOOL_MAX_BYTES
        c.check(limit is not None and spool < limit,
                f"socket: the spool ({spool} bytes) does not fit in the data volume's sizeLimit {size_limit}")


def check_security_context(c, container, pod_security):
    security = container.get("securityContext") or {}
    c.check(security.get("runAsNonRoot") is True, "shipper: securityContext.runAsNonRoot is not true")
    c.check(security.get("runAsUser") == SHIPPER_UID, f"shipper: runAsUser is not {SHIPPER_UID}")
    c.check(security.get("readOnlyRootFilesystem") is True, "shipper: readOnlyRootFilesystem is not true")
    c.check(security.get("allowPrivilegeEscalation") is False, "shipper: allowPrivilegeEscalation is not false")
    drop = (security.get("capabilities") or {}).get("drop") or []
    c.check("ALL" in drop, "shipper: capabilities do not drop ALL")
    seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile") or {}
    c.check(seccomp.get("type") == "RuntimeDefault", "shipper: seccompProfile is not RuntimeDefault")


def check_probes(c, container, metrics_port):
    ports = {port.get("name"): port.get("containerPort") for port in container.get("ports") or []}
    c.check(ports.get("metrics") == metrics_port, f"shipper: no container port 'metrics' = {metrics_port}")
    addr = env_of(container).get("SHIPPER_METRICS_ADDR")
    c.check(addr == f"0.0.0.0:{metrics_port}", f"shipper: SHIPPER_METRICS_ADDR is {addr!r}")
    for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = (container.get(probe_name) or {}).get("httpGet") or {}
        c.check(http.get("path") == path, f"shipper: {probe_name} path is {http.get('path')!r}, not {path}")
        c.check(http.get("port") in ("metrics", metrics_port), f"shipper: {probe_name} is not on the metrics port")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--native", dest="native", action="store_true", default=True)
    mode.add_argument("--classic", dest="native", action="store_false")
    parser.add_argument("--role-arn")
    parser.add_argument("--config", action="store_true")
    parser.add_argument("--config-file")
    parser.add_argument("--stream")
    parser.add_argument("--endpoint")
    parser.add_argument("--aggregate", action="store_true")
    parser.add_argument("--compress", default="none")
    parser.add_argument("--service-monitor", action="store_true")
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--scrape-annotations", action="store_true")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket-path")
    where.add_argument("--socket-abstract")
    parser.add_argument("--framing", default="auto")
    parser.add_argument("--socket-mode", default="0660")
    parser.add_argument("--spool-max-bytes", type=int)
    parser.add_argument("--consumer-lease-table")
    parser.add_argument("--consumer-replicas", type=int, default=1)
    args = parser.parse_args()

    with open(args.rendered, encoding="utf-8") as handle:
        documents = [doc for doc in yaml.safe_load_all(handle) if doc]
    by_kind = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)

    c = Checker()
    all_deployments = by_kind.get("Deployment", [])
    consumers = [d for d in all_deployments if d["metadata"]["name"].endswith("-consumer")]
    deployments = [d for d in all_deployments if d not in consumers]
    if args.consumer_lease_table:
        if c.check(len(consumers) == 1, f"expected one consumer Deployment, found {len(consumers)}"):
            check_consumer(c, consumers[0], args.consumer_lease_table, args.consumer_replicas)
    else:
        c.check(not consumers, "a consumer Deployment is rendered")
    if not c.check(len(deployments) == 1, f"expected one Deployment, found {len(deployments)}"):
        return report(c)
    pod = deployments[0]["spec"]["template"]
    spec = pod["spec"]
    init_containers = {item["name"]: item for item in spec.get("initContainers") or []}
    containers = {item["name"]: item for item in spec.get("containers") or []}

    # Sidecar placement.
    if args.native:
        shipper = init_containers.get("shipper")
        c.check(shipper is not None, "native: shipper is not in initContainers")
        c.check("shipper" not in containers, "native: shipper is also in containers")
        if shipper is not None:
            c.check(shipper.get("restartPolicy") == "Always", "native: shipper's restartPolicy is not Always")
            c.check(shipper.get("startupProbe") is not None, "native: shipper has no startupProbe (the worker would not wait for it)")
    else:
        shipper = containers.get("shipper")
        c.check(shipper is not None, "classic: shipper is not in containers")
        c.check("shipper" not in init_containers, "classic: shipper is in initContainers")
        if shipper is not None:
            c.check("restartPolicy" not in shipper, "classic: shipper has a container restartPolicy")
    worker = containers.get("worker")
    c.check(worker is not None, "the worker container is missing")
    if shipper is None or worker is None:
        return report(c)

    # Shared volumes.
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    worker_mounts, shipper_mounts = mounts_of(worker), mounts_of(shipper)
    for name in ("logs", "socket"):
        c.check("emptyDir" in volumes.get(name, {}), f"volume {name} is not an emptyDir")
        c.check(name in worker_mounts, f"worker does not mount volume {name}")
        c.check(name in shipper_mounts, f"shipper does not mount volume {name}")
        if name in worker_mounts and name in shipper_mounts:
            c.check(worker_mounts[name]["mountPath"] == shipper_mounts[name]["mountPath"],
                    f"volume {name} is mounted at different paths in worker and shipper")
    log_dir = (worker_mounts.get("logs") or {}).get("mountPath", "")
    c.check((shipper_mounts.get("logs") or {}).get("readOnly") is True, "shipper mounts the logs read-write")
    c.check(not (worker_mounts.get("logs") or {}).get("readOnly"), "worker mounts the logs read-only")
    shipper_args = shipper.get("args") or []
    socket_only = not args.config and "--" not in shipper_args
    logfiles = [arg.split("=", 1)[1] for arg in worker.get("args") or [] if arg.startswith("--logfile=")]
    if socket_only:
        # The socket is the only input: a log file would not be shipped, so expect none.
        c.check(not logfiles, f"socket only: the worker writes {logfiles}, which nothing ships")
    else:
        c.check(logfiles and all(path.startswith(log_dir + "/") for path in logfiles),
                f"worker --logfile {logfiles} is not inside the log directory {log_dir}")

    env = env_of(shipper)
    data_dir = env.get("SHIPPER_DATA_DIR")
    c.check("data" in volumes and (shipper_mounts.get("data") or {}).get("mountPath") == data_dir,
            f"data volume is not mounted at SHIPPER_DATA_DIR ({data_dir})")

    # Command line and settings.
    if args.config:
        c.check(shipper_args[:2] == ["run", "--config=/etc/shipper/shipper.toml"], f"config: args are {shipper_args}")
        c.check("--" not in shipper_args, "config: paths are passed on the command line")
        configmaps = by_kind.get("ConfigMap", [])
        c.check(len(configmaps) == 1 and "shipper.toml" in configmaps[0].get("data", {}),
                "config: no ConfigMap with shipper.toml")
        if configmaps:
            name = configmaps[0]["metadata"]["name"]
            c.check((volumes.get("config") or {}).get("configMap", {}).get("name") == name,
                    "config: the config volume does not use the ConfigMap")
        c.check((shipper_mounts.get("config") or {}).get("mountPath") == "/etc/shipper",
                "config: the ConfigMap is not mounted at /etc/shipper")
        c.check("checksum/config" in (pod["metadata"].get("annotations") or {}),
                "config: no checksum/config annotation (pods would not restart on a config change)")
        for name in ("SHIPPER_FORMAT", "SHIPPER_MULTILINE", "SHIPPER_READ_FROM", "SHIPPER_PARTITION_KEY"):
            c.check(name not in env, f"config: {name} is set and would override the file")
        if args.config_file and configmaps:
            check_config_file(c, configmaps[0], args.config_file, log_dir)
    else:
        c.check(shipper_args[:1] == ["tail"], f"tail: args are {shipper_args}")
        paths = shipper_args[shipper_args.index("--") + 1:] if "--" in shipper_args else []
        if args.socket_path or args.socket_abstract:
            c.check(all(path.startswith(log_dir + "/") for path in paths),
                    f"tail: paths {paths} are not inside the log directory {log_dir}")
        else:
            c.check(paths and all(path.startswith(log_dir + "/") for path in paths),
                    f"tail: paths {paths} are not inside the log directory {log_dir}")
        c.check("ConfigMap" not in by_kind, "tail: a ConfigMap is rendered")
        for name in ("SHIPPER_FORMAT", "SHIPPER_MULTILINE", "SHIPPER_READ_FROM", "SHIPPER_COMPRESS"):
            c.check(name in env, f"tail: {name} is not set")
        c.check(env.get("SHIPPER_COMPRESS") == args.compress,
                f"tail: SHIPPER_COMPRESS is {env.get('SHIPPER_COMPRESS')!r}, expected {args.compress!r}")
        # The shipper reads SHIPPER_AGGREGATE as a boolean flag: "true", or no variable at all.
        expected_aggregate = "true" if args.aggregate else None
        c.check(env.get("SHIPPER_AGGREGATE") == expected_aggregate,
                f"tail: SHIPPER_AGGREGATE is {env.get('SHIPPER_AGGREGATE')!r}, expected {expected_aggregate!r}")
    c.check(env.get("SHIPPER_STREAM") == args.stream, f"SHIPPER_STREAM is {env.get('SHIPPER_STREAM')!r}, expected {args.stream!r}")
    c.check(env.get("SHIPPER_ENDPOINT_URL") == args.endpoint,
            f"SHIPPER_ENDPOINT_URL is {env.get('SHIPPER_ENDPOINT_URL')!r}, expected {args.endpoint!r}")
    check_socket(c, args, spec, worker, shipper, volumes)

    # Probes, security, resources, grace period.
    check_probes(c, shipper, args.metrics_port)
    check_security_context(c, shipper, spec.get("securityContext") or {})
    resources = shipper.get("resources") or {}
    c.check((resources.get("requests") or {}).get("cpu") and (resources.get("requests") or {}).get("memory"),
            "shipper: no CPU and memory requests")
    c.check((resources.get("limits") or {}).get("memory"), "shipper: no memory limit")
    grace = seconds(env.get("SHIPPER_GRACE_PERIOD"))
    termination = spec.get("terminationGracePeriodSeconds")
    c.check(grace is not None and isinstance(termination, int) and termination > grace,
            f"terminationGracePeriodSeconds {termination} is not above the shipper's grace period {grace}s")

    # ServiceAccount and IRSA.
    accounts = by_kind.get("ServiceAccount", [])
    if c.check(len(accounts) == 1, f"expected one ServiceAccount, found {len(accounts)}"):
        account = accounts[0]
        c.check(spec.get("serviceAccountName") == account["metadata"]["name"], "the pod does not use the chart's ServiceAccount")
        annotation = (account["metadata"].get("annotations") or {}).get(IRSA_ANNOTATION)
        c.check(annotation == args.role_arn, f"IRSA annotation is {annotation!r}, expected {args.role_arn!r}")

    # Metrics discovery.
    annotations = pod["metadata"].get("annotations") or {}
    if args.scrape_annotations:
        c.check(annotations.get("prometheus.io/scrape") == "true"
                and annotations.get("prometheus.io/port") == str(args.metrics_port)
                and annotations.get("prometheus.io/path") == "/metrics",
                f"scrape annotations are wrong: {annotations}")
    else:
        c.check("prometheus.io/scrape" not in annotations, "prometheus.io/scrape is set while it is off")
    monitors = by_kind.get("ServiceMonitor", [])
    if args.service_monitor:
        services = by_kind.get("Service", [])
        c.check(len(monitors) == 1 and len(services) == 1, "service-monitor: Service and ServiceMonitor not both rendered")
        if monitors and services:
            selector = services[0]["spec"].get("selector") or {}
            pod_labels = pod["metadata"].get("labels") or {}
            c.check(selector and all(pod_labels.get(k) == v for k, v in selector.items()),
                    "service-monitor: the Service does not select the worker pods")
            endpoint = (monitors[0]["spec"].get("endpoints") or [{}])[0]
            c.check(endpoint.get("port") == "metrics" and endpoint.get("path") == "/metrics",
                    "service-monitor: the endpoint is not metrics:/metrics")
    else:
        c.check(not monitors, "a ServiceMonitor is rendered while it is off")

    return report(c)


def check_config_file(c, configmap, path, log_dir):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    rendered = configmap.get("data", {}).get("shipper.toml", "")
    c.check(rendered.rstrip("\n") == text.rstrip("\n"),
            f"config: the ConfigMap's shipper.toml differs from {path}")
    try:
        config = tomllib.loads(rendered)
    except tomllib.TOMLDecodeError as error:
        c.check(False, f"config: the ConfigMap's shipper.toml is not TOML: {error}")
        return
    inputs = config.get("input") or []
    c.check(inputs, "config: the file has no [[input]]")
    for item in inputs:
        for pattern in item.get("paths") or []:
            c.check(pattern.startswith(log_dir + "/"),
                    f"config: input path {pattern} is outside the shared log directory {log_dir}")


def check_consumer(c, deployment, lease_table, replicas):
    """The consumer with a lease table: its replicas, rolling one pod at a time, and its lease
    settings, with the pod's name as the worker id."""
    spec = deployment["spec"]
    c.check(spec.get("replicas") == replicas, f"consumer: replicas is {spec.get('replicas')!r}, not {replicas}")
    strategy = spec.get("strategy") or {}
    c.check(strategy.get("type") == "RollingUpdate", f"consumer: strategy is {strategy.get('type')!r}")
    c.check((strategy.get("rollingUpdate") or {}).get("maxUnavailable") == 0, "consumer: maxUnavailable is not 0")
    containers = {item["name"]: item for item in spec["template"]["spec"].get("containers") or []}
    consumer = containers.get("consumer")
    if not c.check(consumer is not None, "consumer: no container 'consumer'"):
        return
    env = env_of(consumer)
    c.check(env.get("SHIPPER_LEASE_TABLE") == lease_table, f"consumer: SHIPPER_LEASE_TABLE is {env.get('SHIPPER_LEASE_TABLE')!r}")
    pod_name = next((item for item in consumer.get("env") or [] if item["name"] == "POD_NAME"), {})
    field = ((pod_name.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
    c.check(field == "metadata.name", "consumer: POD_NAME does not come from metadata.name")


def report(c):
    for failure in c.failures:
        print(f"  FAIL {failure}")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
