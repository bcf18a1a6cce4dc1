{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "shipper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, or <release>-<name> (just <release> when it already contains
the name). Truncated to 63 characters, the limit of a DNS label.
*/}}
{{- define "shipper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* name-version, for the helm.sh/chart label. */}}
{{- define "shipper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels on every resource. */}}
{{- define "shipper.labels" -}}
helm.sh/chart: {{ include "shipper.chart" . }}
{{ include "shipper.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Labels that select the worker pods; never change them between releases. */}}
{{- define "shipper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shipper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pod runs as. */}}
{{- define "shipper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shipper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The shipper image reference: repository@digest, or repository:tag (default appVersion). */}}
{{- define "shipper.image" -}}
{{- $image := .Values.shipper.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/* Whether a config file is in use (config.toml set): `shipper run` instead of `shipper tail`. */}}
{{- define "shipper.configEnabled" -}}
{{- if .Values.config.toml }}true{{ end }}
{{- end }}

{{/*
The socket URL of shipper.socket: unix://<socketDir.mountPath>/<fileName> or unix://@<abstractName>,
with its framing.
*/}}
{{- define "shipper.socketUrl" -}}
{{- $socket := .Values.shipper.socket }}
{{- if $socket.abstractName }}
{{- printf "unix://@%s?framing=%s" $socket.abstractName $socket.framing }}
{{- else }}
{{- printf "unix://%s?framing=%s" (include "shipper.socketPath" .) $socket.framing }}
{{- end }}
{{- end }}

{{/*
Where the worker connects: the socket file, or @<abstractName> (the example handler in
examples/celery-socket turns a leading @ into the NUL byte of an abstract address).
*/}}
{{- define "shipper.socketAddress" -}}
{{- if .Values.shipper.socket.abstractName }}
{{- printf "@%s" .Values.shipper.socket.abstractName }}
{{- else }}
{{- include "shipper.socketPath" . }}
{{- end }}
{{- end }}

{{/* The socket file's path. */}}
{{- define "shipper.socketPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.socketDir.mountPath) .Values.shipper.socket.fileName }}
{{- end }}

{{/*
A Kubernetes quantity as a number of bytes (a float), for the spool check. Handles every form
the schema's quantity pattern admits: digits with an optional fraction and an optional binary
(Ki..Ei), decimal (k..E) or milli (m) suffix.
*/}}
{{- define "shipper.quantityBytes" -}}
{{- $text := toString . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text }}
{{- $suffix := trimPrefix $number $text }}
{{- $factors := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- if or (not $number) (not (hasKey $factors $suffix)) }}
{{- fail (printf "cannot read %q as a quantity (digits, an optional fraction and one of Ki Mi Gi Ti Pi Ei k M G T P E m)" $text) }}
{{- end }}
{{- mulf (float64 $number) (get $factors $suffix) }}
{{- end }}

{{/*
Render-time checks that a schema cannot express: the stream (unless a config file is used; a
`required` value, so `helm lint` passes with the defaults while install and template fail), an
input in tail mode, the grace-period relation, the Kubernetes version native sidecars need, and
for the socket input: a socket path the kernel accepts, a spool that fits the data volume, and a
socket file the worker may connect to.
*/}}
{{- define "shipper.validate" -}}
{{- $s := .Values.shipper }}
{{- if not (include "shipper.configEnabled" .) }}
{{- $_ := required "shipper.stream is required: the Kinesis stream to ship to (or set config.toml to a config file that names it)" $s.stream }}
{{- if and (not $s.paths) (not $s.socket.enabled) }}
{{- fail "shipper.paths is empty and shipper.socket.enabled is false: the shipper needs an input (files to tail, the socket, or config.toml)" }}
{{- end }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $s.gracePeriodSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than shipper.gracePeriodSeconds (%d): the pod's grace period covers the worker's shutdown and then the shipper's drain" (int .Values.terminationGracePeriodSeconds) (int $s.gracePeriodSeconds)) }}
{{- end }}
{{- if and .Values.sidecar.native (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "sidecar.native=true needs Kubernetes >= 1.29 (native sidecars); this is %s: set sidecar.native=false for the classic sidecar" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if $s.socket.enabled }}
{{- include "shipper.validateSocket" . }}
{{- end }}
{{- end }}

{{- define "shipper.validateSocket" -}}
{{- $s := .Values.shipper }}
{{- $socket := $s.socket }}
{{- if not $socket.abstractName }}
{{- $path := include "shipper.socketPath" . }}
{{- if gt (len $path) 107 }}
{{- fail (printf "shipper.socket: the socket path %s has %d bytes; a unix socket path has at most 107 (shorten socketDir.mountPath or shipper.socket.fileName)" $path (len $path)) }}
{{- end }}
{{- /* The worker connects when the mode lets it write: as the socket file's group (the pod's
fsGroup, which every container has, or the shipper's own group), as its owner (the same uid), or
as anyone. */}}
{{- $mode := regexFind "[0-7]{3}$" (toString $socket.mode) }}
{{- $ownerWrite := ge (mod (atoi (substr 0 1 $mode)) 4) 2 }}
{{- $groupWrite := ge (mod (atoi (substr 1 2 $mode)) 4) 2 }}
{{- $othersWrite := ge (mod (atoi (substr 2 3 $mode)) 4) 2 }}
{{- $shipperSecurity := $s.securityContext | default dict }}
{{- $workerSecurity := .Values.worker.securityContext | default dict }}
{{- $podSecurity := .Values.podSecurityContext | default dict }}
{{- $sameGroup := hasKey $podSecurity "fsGroup" }}
{{- if $shipperSecurity.runAsGroup }}
{{- $shipperGroup := toString $shipperSecurity.runAsGroup }}
{{- if eq (toString $workerSecurity.runAsGroup) $shipperGroup }}
{{- $sameGroup = true }}
{{- end }}
{{- range ($podSecurity.supplementalGroups | default list) }}
{{- if eq (toString .) $shipperGroup }}
{{- $sameGroup = true }}
{{- end }}
{{- end }}
{{- end }}
{{- $sameUser := and $shipperSecurity.runAsUser (eq (toString $workerSecurity.runAsUser) (toString $shipperSecurity.runAsUser)) }}
{{- if not (or $othersWrite (and $groupWrite $sameGroup) (and $ownerWrite $sameUser)) }}
{{- fail (printf "shipper.socket.mode %s does not let the worker connect to the socket file: it needs group write with a group both containers share (podSecurityContext.fsGroup, 65532 by default, or the worker running with the shipper's group), owner write with the shipper's uid, or write for others; or use shipper.socket.abstractName" $socket.mode) }}
{{- end }}
{{- end }}
{{- $volume := $s.data.volume | default dict }}
{{- if and (not $volume) $s.data.sizeLimit }}
{{- $spool := int64 $socket.spoolMaxBytes }}
{{- $spoolText := printf "%d bytes" $spool }}
{{- if eq $spool 0 }}
{{- $spool = 268435456 }}
{{- $spoolText = "0: the shipper's default, 268435456 bytes" }}
{{- end }}
{{- $limit := include "shipper.quantityBytes" $s.data.sizeLimit | float64 }}
{{- if ge (float64 $spool) $limit }}
{{- fail (printf "shipper.socket.spoolMaxBytes (%s) must be below shipper.data.sizeLimit (%v, %.0f bytes): the spool lives in the data volume, next to the checkpoints and dead letters, and the kubelet evicts a pod whose emptyDir outgrows its limit; lower spoolMaxBytes or raise shipper.data.sizeLimit" $spoolText $s.data.sizeLimit $limit) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The shipper's environment: SHIPPER_* settings, pod identity, then extraEnv. */}}
{{- define "shipper.env" -}}
{{- $s := .Values.shipper -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: RUST_LOG
  value: {{ $s.logLevel | quote }}
- name: SHIPPER_LOG_FORMAT
  value: {{ $s.logFormat | quote }}
- name: SHIPPER_DATA_DIR
  value: {{ $s.data.mountPath | quote }}
- name: SHIPPER_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int $s.metrics.port) | quote }}
- name: SHIPPER_GRACE_PERIOD
  value: {{ printf "%ds" (int $s.gracePeriodSeconds) | quote }}
{{- with $s.stream }}
- name: SHIPPER_STREAM
  value: {{ . | quote }}
{{- end }}
{{- with $s.region }}
- name: SHIPPER_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $s.endpointUrl }}
- name: SHIPPER_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if not (include "shipper.configEnabled" .) }}
- name: SHIPPER_READ_FROM
  value: {{ $s.readFrom | quote }}
- name: SHIPPER_FORMAT
  value: {{ $s.format | quote }}
- name: SHIPPER_MULTILINE
  value: {{ $s.multiline | quote }}
- name: SHIPPER_COMPRESS
  value: {{ $s.compress | quote }}
{{- with $s.partitionKey }}
- name: SHIPPER_PARTITION_KEY
  value: {{ . | quote }}
{{- end }}
{{- if $s.aggregate }}
- name: SHIPPER_AGGREGATE
  value: "true"
{{- end }}
{{- with $s.linger }}
- name: SHIPPER_LINGER
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if $s.socket.enabled }}
- name: SHIPPER_SOCKET_MODE
  value: {{ $s.socket.mode | quote }}
{{- if gt (int64 $s.socket.spoolMaxBytes) 0 }}
- name: SHIPPER_SPOOL_MAX_BYTES
  value: {{ printf "%d" (int64 $s.socket.spoolMaxBytes) | quote }}
{{- end }}
{{- end }}
{{- with $s.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The shipper's arguments: the subcommand, flags without an environment variable (--socket has
none), then the paths after "--" (none when the socket is the only input).
*/}}
{{- define "shipper.args" -}}
{{- $s := .Values.shipper -}}
{{- if include "shipper.configEnabled" . }}
- run
- --config=/etc/shipper/shipper.toml
{{- else }}
- tail
{{- end }}
{{- if gt (int $s.concurrency) 0 }}
- {{ printf "--concurrency=%d" (int $s.concurrency) | quote }}
{{- end }}
{{- if $s.socket.enabled }}
- {{ printf "--socket=%s" (include "shipper.socketUrl" .) | quote }}
{{- end }}
{{- range $s.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- if and (not (include "shipper.configEnabled" .)) $s.paths }}
- "--"
{{- range $s.paths }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The shipper container. Rendered into initContainers with restartPolicy: Always (native sidecar)
or into containers (classic sidecar).
*/}}
{{- define "shipper.container" -}}
{{- $s := .Values.shipper -}}
- name: shipper
  image: {{ include "shipper.image" . | quote }}
  imagePullPolicy: {{ $s.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args:
    {{- include "shipper.args" . | trim | nindent 4 }}
  env:
    {{- include "shipper.env" . | trim | nindent 4 }}
  ports:
    - name: metrics
      containerPort: {{ $s.metrics.port }}
      protocol: TCP
  {{- with $s.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: logs
      mountPath: {{ .Values.logs.mountPath }}
      readOnly: true
    - name: socket
      mountPath: {{ .Values.socketDir.mountPath }}
    - name: data
      mountPath: {{ $s.data.mountPath }}
    {{- if include "shipper.configEnabled" . }}
    - name: config
      mountPath: /etc/shipper
      readOnly: true
    {{- end }}
    {{- with $s.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
