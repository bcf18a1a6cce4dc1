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
Render-time checks that a schema cannot express: the stream (unless a config file is used; a
`required` value, so `helm lint` passes with the defaults while install and template fail), the
grace-period relation, the Kubernetes version native sidecars need, and settings the shipper
binary does not have yet (a clear message here beats a pod that crash-loops on an unknown flag).
*/}}
{{- define "shipper.validate" -}}
{{- if .Values.shipper.socket.enabled }}
{{- fail "shipper.socket.enabled: the socket input is not available in this version of the shipper; ship log files (shipper.paths or config.toml) and leave shipper.socket.enabled false" }}
{{- end }}
{{- if not (include "shipper.configEnabled" .) }}
{{- $_ := required "shipper.stream is required: the Kinesis stream to ship to (or set config.toml to a config file that names it)" .Values.shipper.stream }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.shipper.gracePeriodSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than shipper.gracePeriodSeconds (%d): the pod's grace period covers the worker's shutdown and then the shipper's drain" (int .Values.terminationGracePeriodSeconds) (int .Values.shipper.gracePeriodSeconds)) }}
{{- end }}
{{- if and .Values.sidecar.native (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "sidecar.native=true needs Kubernetes >= 1.29 (native sidecars); this is %s: set sidecar.native=false for the classic sidecar" .Capabilities.KubeVersion.Version) }}
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
{{- with $s.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The shipper's arguments: the subcommand, flags without an environment variable, paths. */}}
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
{{- range $s.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- if not (include "shipper.configEnabled" .) }}
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
