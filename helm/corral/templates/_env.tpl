{{/*
The environment of Corral's containers. Only variables the services' settings classes read
(corral.settings, corral.router.settings, corral.worker.settings) belong here: the chart's
tests compare every name rendered below with those classes.
*/}}

{{/* REDIS_URL: the bundled Redis, or the external URL from a Secret (it may hold a password). */}}
{{- define "corral.env.redis" -}}
{{- if and .Values.redis.enabled .Values.redis.sentinel.enabled }}
- name: REDIS_URL
  value: {{ include "corral.redisSentinelURL" . | quote }}
{{- else if .Values.redis.enabled }}
- name: REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "corral.redisName" .) | quote }}
{{- else }}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "redis.enabled is false: set redis.url (or redis.existingSecret) to the cluster's Redis" }}
{{- end }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "corral.secretName" .) .Values.redis.existingSecret }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-url" (ne .Values.redis.existingSecret "") }}
{{- end }}
{{- end }}

{{/* CORRAL_REGISTRY_URL: the bundled registry, or the external one from a Secret (credentials). */}}
{{- define "corral.env.registry" -}}
{{- if .Values.registry.enabled }}
- name: CORRAL_REGISTRY_URL
  value: {{ printf "http://%s:5000" (include "corral.registryName" .) | quote }}
{{- else }}
{{- if not (or .Values.registry.url .Values.registry.existingSecret) }}
{{- fail "registry.enabled is false: set registry.url (or registry.existingSecret) to the cluster's model registry" }}
{{- end }}
- name: CORRAL_REGISTRY_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "corral.secretName" .) .Values.registry.existingSecret }}
      key: {{ ternary .Values.registry.existingSecretKey "registry-url" (ne .Values.registry.existingSecret "") }}
{{- end }}
{{- end }}

{{/* With auth.enabled: one of the auth Secret's keys (admin-key, cluster-token) as a variable. */}}
{{- define "corral.env.authSecret" -}}
{{- $root := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "corral.authSecretName" $root }}
      key: {{ index . 2 }}
{{- end }}

{{/* What routers and workers both read. */}}
{{- define "corral.env.common" -}}
{{- $c := .Values.config -}}
- name: OLLAMA_HOST
  value: {{ printf "0.0.0.0:%s" (include "corral.port" .) | quote }}
- name: CORRAL_LOG_FORMAT
  value: {{ $c.logFormat | quote }}
{{- if $c.debug }}
- name: OLLAMA_DEBUG
  value: "1"
{{- end }}
{{- with $c.origins }}
- name: OLLAMA_ORIGINS
  value: {{ . | quote }}
{{- end }}
{{- with $c.registryMirrors }}
- name: CORRAL_REGISTRY_MIRRORS
  value: {{ . | quote }}
{{- end }}
- name: OLLAMA_MAX_QUEUE
  value: {{ $c.maxQueue | int | quote }}
- name: OLLAMA_CONTEXT_LENGTH
  value: {{ $c.contextLength | int | quote }}
- name: OLLAMA_LOAD_TIMEOUT
  value: {{ $c.loadTimeout | quote }}
- name: CORRAL_MAX_REQUEST_BODY
  value: {{ $c.maxRequestBody | quote }}
{{- include "corral.env.redis" . }}
{{- include "corral.env.registry" . }}
{{- if .Values.auth.enabled }}
{{ include "corral.env.authSecret" (list . "CORRAL_CLUSTER_TOKEN" "cluster-token") }}
{{- end }}
{{- end }}

{{/*
CORRAL_NUM_THREADS for a worker pool: its own value, else the container's CPU limit, else its
CPU request ("2", 2, "1500m"), at least 1. Without it llama.cpp would start a thread per core
of the node, far more than the pod may use, and be throttled.
*/}}
{{- define "corral.worker.threads" -}}
{{- $pool := . -}}
{{- if $pool.threads -}}
{{ $pool.threads | int }}
{{- else -}}
{{- $cpu := toString (dig "limits" "cpu" (dig "requests" "cpu" "" (default dict $pool.resources)) (default dict $pool.resources)) -}}
{{- if not $cpu -}}
0
{{- else if hasSuffix "m" $cpu -}}
{{ max 1 (div (trimSuffix "m" $cpu | atoi) 1000) }}
{{- else -}}
{{ max 1 ($cpu | float64 | floor | int) }}
{{- end -}}
{{- end -}}
{{- end }}

{{/* CORRAL_WORKER_LABELS: "pool=<pool>" and the pool's own labels, as k=v,k=v. */}}
{{- define "corral.worker.labels" -}}
{{- $poolName := index . 0 -}}
{{- $pool := index . 1 -}}
{{- $items := list (printf "pool=%s" $poolName) -}}
{{- range $k, $v := $pool.labels -}}
{{- if ne $k "pool" }}{{ $items = append $items (printf "%s=%s" $k (toString $v)) }}{{ end -}}
{{- end -}}
{{- join "," $items -}}
{{- end }}
