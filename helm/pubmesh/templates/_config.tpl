{{/*
The node's TOML configuration file. Keys are the node's flag names with '-'
replaced by '_' (the node rejects unknown keys). listen and node_id come from
the pod (flag and downward API); secrets come from the Secret as env vars.
*/}}
{{- define "pubmesh.configToml" -}}
# pubmesh node configuration, rendered by the {{ include "pubmesh.chart" . }} chart.
drain_seconds = {{ int .Values.drainSeconds }}
redis_prefix = {{ include "pubmesh.tomlValue" .Values.redis.prefix }}
{{- $urls := include "pubmesh.redisUrls" . | fromJsonArray }}
{{- if $urls }}
redis_url = {{ include "pubmesh.tomlValue" $urls }}
{{- end }}
{{- if .Values.redis.cluster }}
redis_cluster = true
{{- end }}
{{- range $key, $value := .Values.config }}
{{- if and (ne $key "namespaces") (not (kindIs "invalid" $value)) }}
{{ $key }} = {{ include "pubmesh.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range .Values.config.namespaces }}

[[namespaces]]
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "pubmesh.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
