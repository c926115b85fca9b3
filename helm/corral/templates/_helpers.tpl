{{/* Names, labels and images shared by every template. */}}

{{/* The port every Corral process listens on (OLLAMA_HOST) and serves /metrics on. */}}
{{- define "corral.port" -}}11434{{- end }}

{{- define "corral.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-corral", cut to 63 characters (a DNS label). */}}
{{- define "corral.fullname" -}}
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

{{/*
A component's name: the full name cut so that "-<component>" always fits in `max` characters
(63 by default). Cutting the joined string instead would let two components collide.
Call: include "corral.componentName" (list $ "router") or (list $ "redis" 52).
*/}}
{{- define "corral.componentName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $max := 63 }}
{{- if gt (len .) 2 }}{{ $max = index . 2 }}{{ end }}
{{- $base := include "corral.fullname" $root | trunc (int (sub $max (add1 (len $suffix)))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/*
StatefulSet names stay within 52 characters: Kubernetes labels each pod with
controller-revision-hash "<name>-<10 characters>", which must fit in 63.
*/}}
{{- define "corral.statefulName" -}}
{{- include "corral.componentName" (list (index . 0) (index . 1) 52) }}
{{- end }}

{{/* Entry Service: what apps (and the preload Job) call. */}}
{{- define "corral.endpointName" -}}
{{- include "corral.fullname" . }}
{{- end }}

{{- define "corral.redisName" -}}
{{- include "corral.statefulName" (list . "redis") }}
{{- end }}

{{/* The bundled Sentinel group: its pods' addresses (host:redis-port:sentinel-port, in ordinal
order), the name its master is monitored under, and the URL routers and workers use. */}}
{{- define "corral.redisPeers" -}}
{{- $name := include "corral.redisName" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.redis.sentinel.replicas) -}}
{{- $peers = append $peers (printf "%s-%d.%s-headless:6379:26379" $name $i $name) -}}
{{- end -}}
{{- join " " $peers -}}
{{- end }}

{{- define "corral.redisSentinelService" -}}corral{{- end }}

{{- define "corral.redisSentinelURL" -}}
{{- $name := include "corral.redisName" . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.redis.sentinel.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless:26379" $name $i $name) -}}
{{- end -}}
redis+sentinel://{{ join "," $hosts }}/{{ include "corral.redisSentinelService" . }}/0
{{- end }}

{{- define "corral.registryName" -}}
{{- include "corral.statefulName" (list . "registry") }}
{{- end }}

{{/* The Secret holding external URLs and S3 keys given as values. */}}
{{- define "corral.secretName" -}}
{{- include "corral.componentName" (list . "secrets") }}
{{- end }}

{{- define "corral.authSecretName" -}}
{{- default (include "corral.componentName" (list . "auth")) .Values.auth.existingSecret }}
{{- end }}

{{- define "corral.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "corral.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "corral.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable across upgrades, so never the version (a Deployment's selector is
immutable). Call: include "corral.selectorLabels" (list $ "router").
*/}}
{{- define "corral.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "corral.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of an object. Call: include "corral.labels" (list $ "router"). */}}
{{- define "corral.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "corral.chart" $root }}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: corral
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- end }}

{{/* A Corral image: "<image.registry>/<repository>:<tag or appVersion>". Call: (list $ .Values.router.image). */}}
{{- define "corral.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- printf "%s/%s:%s" ($root.Values.image.registry | trimSuffix "/") $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{/* A bundled third-party image (Redis, the registry): a full repository and its own tag. */}}
{{- define "corral.externalImage" -}}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/* The pod-level settings every pod shares. */}}
{{- define "corral.podCommon" -}}
serviceAccountName: {{ include "corral.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "corral.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}
