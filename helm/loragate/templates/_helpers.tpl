{{/* Names. */}}
{{- define "loragate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loragate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels: common ones on every object; selector ones pick a component's pods. */}}
{{- define "loragate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "loragate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loragate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "loragate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loragate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loragate.componentLabels" -}}
{{ include "loragate.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loragate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loragate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion. */}}
{{- define "loragate.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
The hardening every container of the chart gets; not a value, so no pod can lose it.
*/}}
{{- define "loragate.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod level: the ids from values ({runAsUser, runAsGroup, fsGroup}), the rest fixed. */}}
{{- define "loragate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
{{- if .fsGroup }}
fsGroup: {{ .fsGroup }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Secrets: the chart's own names, or the existing Secret a value names. */}}
{{- define "loragate.databaseSecretName" -}}
{{- default (printf "%s-database" (include "loragate.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}

{{- define "loragate.adminKeySecretName" -}}
{{- default (printf "%s-admin-key" (include "loragate.fullname" .)) .Values.adminKey.existingSecret -}}
{{- end -}}

{{- define "loragate.otlpSecretName" -}}
{{- default (printf "%s-otlp" (include "loragate.fullname" .)) .Values.otlp.existingSecret -}}
{{- end -}}

{{- define "loragate.postgresqlName" -}}
{{- printf "%s-postgresql" (include "loragate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
How migrations run: "hook" (a Helm pre-install/pre-upgrade hook) or "job" (a Job per release
revision, gateway pods waiting for the schema). "auto": hook, except with the bundled PostgreSQL,
which a pre-install hook would run before the database exists.
*/}}
{{- define "loragate.migrationsMode" -}}
{{- $mode := .Values.migrations.mode -}}
{{- if eq $mode "auto" -}}
{{- ternary "job" "hook" .Values.postgresql.enabled -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}

{{/*
Annotations that make an object a pre-install/pre-upgrade hook at a weight (dict "root" $
"weight" N "deletePolicy" P).
*/}}
{{- define "loragate.hookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: {{ .deletePolicy }}
{{- if .root.Values.migrations.argocd }}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/sync-wave: {{ .weight | quote }}
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
{{- end }}
{{- end -}}

{{/*
A value kept across upgrades: the one in the live Secret when there is one (lookup; empty
offline), else a new one. (dict "root" $ "secret" NAME "key" KEY "new" VALUE)
*/}}
{{- define "loragate.keptValue" -}}
{{- $live := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $live $live.data (hasKey $live.data .key) -}}
{{- index $live.data .key | b64dec -}}
{{- else -}}
{{- .new -}}
{{- end -}}
{{- end -}}

{{/*
Engine pools with their defaults filled in: a list of dicts, as JSON (fromJsonArray to read).
A pool is engine.poolDefaults, overlaid with its accelerator's defaults (engine.accelerators.cpu
or .gpu), overlaid with its own keys.
*/}}
{{- define "loragate.pools" -}}
{{- $pools := list -}}
{{- range $pool := .Values.engine.pools -}}
{{- $accelerator := default "gpu" $pool.accelerator -}}
{{- $merged := deepCopy $.Values.engine.poolDefaults -}}
{{- $merged = mergeOverwrite $merged (index $.Values.engine.accelerators $accelerator | deepCopy) -}}
{{- $merged = mergeOverwrite $merged (deepCopy $pool) -}}
{{- /* mergeOverwrite skips empty values: a pool's 0, false or [] must still win. */ -}}
{{- range $key, $value := $pool -}}
{{- if kindIs "map" $value -}}
{{- range $inner, $innerValue := $value -}}
{{- if not (kindIs "map" $innerValue) -}}
{{- $_ := set (index $merged $key) $inner $innerValue -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- $_ := set $merged $key $value -}}
{{- end -}}
{{- end -}}
{{- $_ := set $merged "accelerator" $accelerator -}}
{{- $pools = append $pools $merged -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/* The StatefulSet and headless Service of one pool: <fullname>-engine-<pool>. */}}
{{- define "loragate.engineName" -}}
{{- printf "%s-engine-%s" (include "loragate.fullname" .root) .pool.name -}}
{{- end -}}

{{/* Where the gateway and the engines see a pool's model volume. */}}
{{- define "loragate.modelMount" -}}
{{- printf "/models/%s" .name -}}
{{- end -}}

{{/*
The model directory vLLM serves: under the pool's model volume when it has one, else a path in
the engine image (or a hub id, which vLLM downloads).
*/}}
{{- define "loragate.modelPath" -}}
{{- if .model.volume -}}
{{- printf "%s/%s" (include "loragate.modelMount" .) (trimPrefix "/" .model.path) | trimSuffix "/" -}}
{{- else -}}
{{- .model.path -}}
{{- end -}}
{{- end -}}

{{/*
The copy of the base model the gateway validates adapters against (safetensors headers): the
model volume, mounted read-only, or a copy from the engine image; empty when neither.
*/}}
{{- define "loragate.gatewayModelDir" -}}
{{- if .model.volume -}}
{{- include "loragate.modelPath" . -}}
{{- else if .model.copyToGateway -}}
{{- printf "/var/lib/loragate/models/%s/%s" .name (base .model.path) -}}
{{- end -}}
{{- end -}}

{{/* LORAGATE_ENGINES: every pool with the stable DNS name of each replica. */}}
{{- define "loragate.enginesJson" -}}
{{- $pools := list -}}
{{- range $pool := include "loragate.pools" . | fromJsonArray -}}
{{- $name := include "loragate.engineName" (dict "root" $ "pool" $pool) -}}
{{- $urls := list -}}
{{- range $i := until (int $pool.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc:%d" $name $i $name $.Release.Namespace (int $.Values.engine.port)) -}}
{{- end -}}
{{- $entry := dict "name" $pool.name "base_model" $pool.servedModelName "urls" $urls "max_lora_rank" (int $pool.maxLoraRank) "priority_scheduling" true -}}
{{- $modelDir := include "loragate.gatewayModelDir" $pool -}}
{{- if $modelDir -}}
{{- $_ := set $entry "model_dir" $modelDir -}}
{{- end -}}
{{- $pools = append $pools $entry -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{- define "loragate.postgresqlSecretName" -}}
{{- default (printf "%s-database" (include "loragate.fullname" .)) .Values.postgresql.existingSecret -}}
{{- end -}}

{{/*
The environment every loragate container (gateway, migrations) shares. With the bundled
PostgreSQL the URL is put together from its password when the pod starts.
*/}}
{{- define "loragate.commonEnv" -}}
{{- if .Values.postgresql.enabled -}}
- name: LORAGATE_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "loragate.postgresqlSecretName" . }}
      key: {{ .Values.postgresql.existingSecretKey }}
- name: LORAGATE_DATABASE_URL
  value: {{ printf "postgresql+asyncpg://%s:$(LORAGATE_POSTGRES_PASSWORD)@%s.%s.svc:5432/%s" .Values.postgresql.username (include "loragate.postgresqlName" .) .Release.Namespace .Values.postgresql.database | quote }}
{{- else -}}
- name: LORAGATE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "loragate.databaseSecretName" . }}
      key: {{ .Values.database.existingSecretKey }}
{{- end }}
- name: LORAGATE_DATA_DIR
  value: /var/lib/loragate
- name: HOME
  value: /var/lib/loragate
- name: TMPDIR
  value: /tmp
- name: LORAGATE_LOG_LEVEL
  value: {{ .Values.gateway.logLevel | quote }}
{{- end -}}

{{/* The data dir and /tmp of a loragate pod: both per pod, the root filesystem read-only. */}}
{{- define "loragate.scratchVolumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.gateway.dataVolume.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{/* One container of the migrations Job: (dict "root" $ "step" (list NAME ARGS)). */}}
{{- define "loragate.migrationStep" -}}
{{- $root := .root -}}
- name: {{ index .step 0 }}
  image: {{ include "loragate.image" (dict "root" $root "image" $root.Values.image) }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: {{ index .step 1 | toJson }}
  env:
    {{- include "loragate.commonEnv" $root | nindent 4 }}
    {{- if $root.Values.adminKey.bootstrap }}
    - name: LORAGATE_BOOTSTRAP_ADMIN_KEY
      valueFrom:
        secretKeyRef:
          name: {{ include "loragate.adminKeySecretName" $root }}
          key: {{ $root.Values.adminKey.existingSecretKey }}
    {{- end }}
  securityContext:
    {{- include "loragate.containerSecurityContext" $root | nindent 4 }}
  resources:
    {{- toYaml $root.Values.migrations.resources | nindent 4 }}
  volumeMounts:
    - name: data
      mountPath: /var/lib/loragate
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* NetworkPolicy egress rules. */}}
{{- define "loragate.dnsEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{- define "loragate.databaseEgress" -}}
{{- if .Values.postgresql.enabled -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "loragate.selectorLabels" (dict "root" . "component" "postgresql") | nindent 10 }}
  ports:
    - port: 5432
      protocol: TCP
{{- else -}}
- ports:
    - port: {{ .Values.database.port }}
      protocol: TCP
  {{- with .Values.database.networkPolicyPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}
