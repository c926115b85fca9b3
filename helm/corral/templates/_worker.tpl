{{/*
One worker pool's Deployment. Call: include "corral.worker" (list $ "cpu" .Values.workers.cpu).
The CPU and GPU pools differ only in image, GPU limit, runtime class and scheduling.
*/}}
{{- define "corral.worker.selectorLabels" -}}
{{- include "corral.selectorLabels" (list (index . 0) "worker") }}
corral/pool: {{ index . 1 }}
{{- end }}

{{- define "corral.worker.name" -}}
{{- include "corral.componentName" (list (index . 0) (printf "worker-%s" (index . 1))) }}
{{- end }}

{{- define "corral.worker" -}}
{{- $root := index . 0 }}
{{- $poolName := index . 1 }}
{{- $pool := index . 2 }}
{{- $w := $root.Values.workers }}
{{- $resources := deepCopy (default dict $pool.resources) }}
{{- if eq $poolName "gpu" }}
{{- $limits := default dict $resources.limits }}
{{- $_ := set $limits "nvidia.com/gpu" ($pool.gpusPerPod | int) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- $threads := include "corral.worker.threads" $pool | int }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "corral.worker.name" (list $root $poolName) }}
  labels:
    {{- include "corral.labels" (list $root "worker") | nindent 4 }}
    corral/pool: {{ $poolName }}
spec:
  {{- if not $w.keda.enabled }}
  replicas: {{ $pool.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "corral.worker.selectorLabels" (list $root $poolName) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "corral.labels" (list $root "worker") | nindent 8 }}
        corral/pool: {{ $poolName }}
      annotations:
        checksum/secrets: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- with $pool.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "corral.podCommon" $root | nindent 6 }}
      # On SIGTERM a worker leaves the cluster, then lets requests in flight finish for
      # CORRAL_DRAIN_TIMEOUT: Kubernetes must wait longer than that before it kills it.
      terminationGracePeriodSeconds: {{ add $w.drainTimeoutSeconds 15 }}
      {{- with $pool.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      containers:
        - name: worker
          image: {{ include "corral.image" (list $root $pool.image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          securityContext:
            {{- include "corral.securityContext" $root | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ include "corral.port" $root }}
              protocol: TCP
          # Routers reach a worker at its pod IP (CORRAL_WORKER_URL's default) and know it by its
          # pod name (CORRAL_WORKER_ID's default): neither needs setting here.
          env:
            {{- include "corral.env.common" $root | nindent 12 }}
            - name: OLLAMA_MODELS
              value: /var/cache/corral
            - name: CORRAL_CACHE_MAX_BYTES
              value: {{ div (mul $w.cache.sizeGiB 1073741824 9) 10 | quote }}
            - name: OLLAMA_NUM_PARALLEL
              value: {{ $w.numParallel | int | quote }}
            - name: OLLAMA_MAX_LOADED_MODELS
              value: {{ $w.maxLoadedModels | int | quote }}
            {{- if not (kindIs "invalid" $w.flashAttention) }}
            - name: OLLAMA_FLASH_ATTENTION
              value: {{ $w.flashAttention | toString | quote }}
            {{- end }}
            - name: OLLAMA_KV_CACHE_TYPE
              value: {{ $w.kvCacheType | quote }}
            - name: CORRAL_DRAIN_TIMEOUT
              value: {{ printf "%ds" ($w.drainTimeoutSeconds | int) | quote }}
            - name: CORRAL_MAX_MESSAGES
              value: {{ $root.Values.config.maxMessages | int | quote }}
            - name: CORRAL_MAX_INPUTS
              value: {{ $root.Values.config.maxInputs | int | quote }}
            - name: CORRAL_WORKER_LABELS
              value: {{ include "corral.worker.labels" (list $poolName $pool) | quote }}
            {{- if $threads }}
            - name: CORRAL_NUM_THREADS
              value: {{ $threads | quote }}
            {{- end }}
            {{- with $pool.memory }}
            - name: CORRAL_WORKER_MEMORY
              value: {{ . | quote }}
            {{- end }}
            {{- with $w.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          readinessProbe:
            {{- toYaml $w.readinessProbe | nindent 12 }}
          livenessProbe:
            {{- toYaml $w.livenessProbe | nindent 12 }}
          resources:
            {{- toYaml $resources | nindent 12 }}
          volumeMounts:
            - name: cache
              mountPath: /var/cache/corral
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 1Gi
        - name: cache
          {{- if eq $w.cache.type "hostPath" }}
          hostPath:
            path: {{ $w.cache.hostPath }}
            type: DirectoryOrCreate
          {{- else if eq $w.cache.type "ephemeral" }}
          ephemeral:
            volumeClaimTemplate:
              metadata:
                labels:
                  {{- include "corral.selectorLabels" (list $root "worker") | nindent 18 }}
              spec:
                accessModes: ["ReadWriteOnce"]
                {{- with $w.cache.storageClass }}
                storageClassName: {{ . }}
                {{- end }}
                resources:
                  requests:
                    storage: {{ printf "%dGi" ($w.cache.sizeGiB | int) }}
          {{- else }}
          emptyDir:
            sizeLimit: {{ printf "%dGi" ($w.cache.sizeGiB | int) }}
          {{- end }}
      {{- with $pool.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
