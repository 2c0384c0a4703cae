{{- define "notebook-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "notebook-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "notebook-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "notebook-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "notebook-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "notebook-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "notebook-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "notebook-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "notebook-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- /* The gateway: its own names and labels, so that no selector of the
operator (Deployment, metrics Service, NetworkPolicy peer) picks its pods. */ -}}
{{- define "notebook-operator.gateway.fullname" -}}
{{- printf "%s-gateway" (include "notebook-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "notebook-operator.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-gateway" (include "notebook-operator.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "notebook-operator.gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "notebook-operator.gateway.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "notebook-operator.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "notebook-operator.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "notebook-operator.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Kubernetes the chart needs: 1.33 or newer (the sidecar of every kernel
pod is a native sidecar container, GA in 1.33). Against a live cluster
(helm install, upgrade, template --validate) .Capabilities.KubeVersion is the
cluster's, and an older one is refused. Offline it is what --kube-version
says, or, without the flag, Helm's built-in default (v1.20.0, no cluster's
version): that one passes, so a plain `helm template` renders.
*/}}
{{- define "notebook-operator.minKubeVersion" -}}1.33.0-0{{- end }}

{{- define "notebook-operator.checkKubeVersion" -}}
{{- $version := .Capabilities.KubeVersion.Version }}
{{- $offlineDefault := "v1.20.0" }}
{{- if and (ne $version $offlineDefault) (semverCompare (printf "<%s" (include "notebook-operator.minKubeVersion" .)) $version) }}
{{- $min := include "notebook-operator.minKubeVersion" . | trimSuffix "-0" }}
{{- fail (printf "notebook-operator needs Kubernetes %s or newer (each kernel pod runs its sidecar as a native sidecar container); the target is %s. Install on a newer cluster. Rendering offline (helm template, a GitOps tool), --kube-version must name the cluster you deploy to, e.g. --kube-version 1.34.0, or be left out." $min $version) }}
{{- end }}
{{- end }}

{{- /* Who may reach the session sidecars (port 8888): the operator, the
gateway when enabled, the agent namespaces and `networkPolicy.extraFrom`. A
YAML list of NetworkPolicy peers; the operator gets it as JSON
(--policy-ingress-from) and puts it in every session's NetworkPolicy. */ -}}
{{- define "notebook-operator.sidecarPeers" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "notebook-operator.selectorLabels" . | nindent 6 }}
{{- if .Values.gateway.enabled }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "notebook-operator.gateway.selectorLabels" . | nindent 6 }}
{{- end }}
{{- with .Values.networkPolicy.agentNamespaceSelector }}
- namespaceSelector:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- with .Values.networkPolicy.extraFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}
