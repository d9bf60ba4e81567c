{{/* Names, labels and the values the operator's config and RBAC share. */}}

{{- define "tars.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tars.fullname" -}}
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

{{- define "tars.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: tars
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tars.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tars.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tars.operator.labels" -}}
{{ include "tars.labels" . }}
app.kubernetes.io/name: {{ include "tars.name" . }}-operator
app.kubernetes.io/component: operator
{{- end }}

{{- define "tars.operator.serviceAccountName" -}}
{{- default (include "tars.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "tars.operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tars.replica.image" -}}
{{- printf "%s:%s" .Values.replicaImage.repository (default .Chart.AppVersion .Values.replicaImage.tag) }}
{{- end }}

{{/* The release namespace first, then operator.watchNamespaces, without repeats. */}}
{{- define "tars.namespaces" -}}
{{- $namespaces := list .Release.Namespace }}
{{- range .Values.operator.watchNamespaces }}
{{- $namespaces = append $namespaces . }}
{{- end }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{- define "tars.ollama.fullname" -}}
{{- printf "%s-ollama" (include "tars.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tars.ollama.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tars.name" . }}-ollama
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tars.ollama.labels" -}}
{{ include "tars.labels" . }}
app.kubernetes.io/name: {{ include "tars.name" . }}-ollama
app.kubernetes.io/component: ollama
{{- end }}

{{/* OLLAMA_HOST for every replica: the chart's Ollama, else ollama.host, else none. */}}
{{- define "tars.ollamaHost" -}}
{{- if .Values.ollama.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "tars.ollama.fullname" .) .Release.Namespace (int .Values.ollama.port) }}
{{- else }}
{{- .Values.ollama.host }}
{{- end }}
{{- end }}

{{/*
The operator's configuration file (tars_operator.config.OperatorConfig, snake_case keys).
*/}}
{{- define "tars.operator.config" -}}
image: {{ include "tars.replica.image" . | quote }}
image_pull_policy: {{ .Values.replicaImage.pullPolicy }}
port: {{ .Values.replicaPort }}
engine: {{ .Values.engine }}
model: {{ .Values.model | quote }}
{{- with include "tars.ollamaHost" . }}
ollama_host: {{ . | quote }}
{{- end }}
coordinator_service_account: {{ .Values.coordinator.serviceAccountName }}
scratch_size_limit: {{ .Values.scratchSizeLimit | quote }}
tester_isolation: {{ .Values.sandbox.testerIsolation }}
{{- with .Values.sandbox.packageIndex.caConfigMap }}
package_index_ca:
  config_map: {{ . | quote }}
  key: {{ $.Values.sandbox.packageIndex.caKey | quote }}
{{- end }}
roles:
{{- range $role := list "analyzer" "generator" "tester" "coordinator" }}
{{- $defaults := index $.Values.roles $role }}
  {{ $role }}:
    {{- with $defaults.image }}
    image: {{ . | quote }}
    {{- end }}
    resources: {{ $defaults.resources | toJson }}
{{- end }}
{{- end }}

{{/*
What the operator does in a watched namespace (operator/tars_operator):
- kopf lists and watches TarsReplicas and SelfCodingRuns and keeps its handler progress
  in their annotations (patch); the operator writes their status (patch);
- it server-side applies each replica's Deployment and Service (patch; create for the
  first apply) and follows them (list, watch), re-reading a replica by name (get);
- its children's owner references block the owner's deletion, which needs update on the
  owner's finalizers where OwnerReferencesPermissionEnforcement is on;
- a run's report and patch go in a ConfigMap the run owns; upload sources are ConfigMaps;
- kopf posts Events about handlers and transitions.
No Secrets, Pods, exec or deletes: garbage collection removes children with their owners.
*/}}
{{- define "tars.operator.rules" -}}
- apiGroups: ["tars.dev"]
  resources: ["tarsreplicas", "selfcodingruns"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["tars.dev"]
  resources: ["tarsreplicas"]
  verbs: ["create", "delete"]
- apiGroups: ["tars.dev"]
  resources: ["tarsreplicas/status", "selfcodingruns/status"]
  verbs: ["get", "patch"]
- apiGroups: ["tars.dev"]
  resources: ["tarsreplicas/finalizers", "selfcodingruns/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
What the coordinator replica does in its namespace: it finds the analyzer, generator and
tester replicas through TarsReplica status and their ready endpoints through
EndpointSlices, reads the run it works on and its upload ConfigMap, and reports progress
on the run's status and the full report in the run's ConfigMap. `tarscli self-code setup`
grants the same (cli/tarscli/coordinator_access.py); tests/packaging/test_coordinator_access.py
fails when the two differ.
*/}}
{{- define "tars.coordinator.rules" -}}
- apiGroups: ["tars.dev"]
  resources: ["tarsreplicas"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
{{- with .Values.rbac.gitCredentialSecrets }}
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- end }}
