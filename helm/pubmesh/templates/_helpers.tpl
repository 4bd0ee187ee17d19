{{/*
Names and labels.
*/}}
{{- define "pubmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: release-chart, unless the release name already holds the chart
name. Kept at 45 characters so that the pods' generated names
(<name>-<hash>-<id>) stay within the node's 64-character node id.
*/}}
{{- define "pubmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pubmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "pubmesh.labels" -}}
helm.sh/chart: {{ include "pubmesh.chart" . }}
app.kubernetes.io/name: {{ include "pubmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pubmesh
{{- end -}}

{{/* Selector of the pubmesh node pods (the in-chart Redis has component=redis). */}}
{{- define "pubmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pubmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "pubmesh.redis.fullname" -}}
{{- printf "%s-redis" (include "pubmesh.fullname" .) -}}
{{- end -}}

{{- define "pubmesh.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pubmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "pubmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pubmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pubmesh.secretName" -}}
{{- default (include "pubmesh.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "pubmesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Redis URLs written to the config file: the in-chart Redis, or redis.urls.
(redis.existingSecret is passed as PUBMESH_REDIS_URL and wins over the file.)
*/}}
{{- define "pubmesh.redisUrls" -}}
{{- if .Values.redis.internal.enabled -}}
{{- list (printf "redis://%s:6379" (include "pubmesh.redis.fullname" .)) | toJson -}}
{{- else -}}
{{- .Values.redis.urls | toJson -}}
{{- end -}}
{{- end -}}

{{- define "pubmesh.hasRedis" -}}
{{- if or .Values.redis.existingSecret .Values.redis.internal.enabled .Values.redis.urls -}}true{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: computed from preStop + drain + margin, or the
explicit value, which must leave the node time to drain.
*/}}
{{- define "pubmesh.minimumGrace" -}}
{{- add (int .Values.preStop.sleepSeconds) (int .Values.drainSeconds) 5 -}}
{{- end -}}

{{- define "pubmesh.terminationGrace" -}}
{{- $min := include "pubmesh.minimumGrace" . | int -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (int .Values.preStop.sleepSeconds) (int .Values.drainSeconds) (int .Values.terminationGraceMarginSeconds) -}}
{{- else -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- if lt $grace $min -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStop.sleepSeconds + drainSeconds + 5 = %d, or the node is killed before it has drained" $grace $min) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}
{{- end -}}

{{/*
Checks across values that the JSON schema cannot express.
*/}}
{{- define "pubmesh.validate" -}}
{{- if not (include "pubmesh.hasRedis" .) -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
{{- fail "more than one pubmesh node needs Redis: set redis.urls, redis.existingSecret or redis.internal.enabled (or keep replicaCount 1 without autoscaling)" -}}
{{- end -}}
{{- if .Values.redis.cluster -}}
{{- fail "redis.cluster needs a Redis URL (redis.urls or redis.existingSecret)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.redis.cluster .Values.redis.internal.enabled (not .Values.redis.existingSecret) -}}
{{- fail "redis.cluster cannot be used with redis.internal, which is a single plain Redis" -}}
{{- end -}}
{{- if and .Values.auth.existingSecret (or .Values.auth.apiKey .Values.auth.jwtSecret .Values.auth.jwtPublicKey) -}}
{{- fail "auth.existingSecret is set: leave auth.apiKey, auth.jwtSecret and auth.jwtPublicKey empty (they would be ignored)" -}}
{{- end -}}
{{- if and .Values.config.require_auth (not (or .Values.auth.jwtSecret .Values.auth.jwtPublicKey .Values.auth.existingSecretKeys.jwtSecret .Values.auth.existingSecretKeys.jwtPublicKey)) -}}
{{- fail "config.require_auth needs a JWT key: auth.jwtSecret, auth.jwtPublicKey, or one of auth.existingSecretKeys.jwtSecret/jwtPublicKey" -}}
{{- end -}}
{{- $jwtKey := or .Values.auth.jwtSecret .Values.auth.jwtPublicKey .Values.auth.existingSecretKeys.jwtSecret .Values.auth.existingSecretKeys.jwtPublicKey -}}
{{- range .Values.config.namespaces -}}
{{- if and (has (.subscribe | default "anyone") (list "authenticated" "claim")) (not $jwtKey) -}}
{{- fail (printf "config.namespaces %q lets only authenticated sockets subscribe (subscribe: %s): it needs a JWT key (auth.jwtSecret, auth.jwtPublicKey, or auth.existingSecretKeys.jwtSecret/jwtPublicKey)" .pattern .subscribe) -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.containerPort) (int .Values.adminPort) -}}
{{- fail "adminPort must differ from containerPort: the API and /metrics get their own port" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetCPUUtilizationPercentage (not (dig "requests" "cpu" "" .Values.resources)) -}}
{{- fail "CPU autoscaling needs resources.requests.cpu" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.connectionsPerPod.enabled) -}}
{{- fail "autoscaling needs a metric: autoscaling.targetCPUUtilizationPercentage or autoscaling.connectionsPerPod.enabled" -}}
{{- end -}}
{{- if and .Values.pdb.enabled (not (kindIs "invalid" .Values.pdb.minAvailable)) (not (kindIs "invalid" .Values.pdb.maxUnavailable)) -}}
{{- fail "set only one of pdb.minAvailable and pdb.maxUnavailable (null the other)" -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) -}}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to)" -}}
{{- end -}}
{{- end -}}

{{/*
One TOML value. Strings, numbers, booleans and lists of them are written as
JSON, which is valid TOML for these types.
*/}}
{{- define "pubmesh.tomlValue" -}}
{{- toJson . -}}
{{- end -}}
