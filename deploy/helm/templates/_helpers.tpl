{{/* A required, non-empty list joined with commas: (dict "list" .Values.x "what" "x"). */}}
{{- define "causeway.list" -}}
{{- if not .list }}{{ fail (printf "%s: at least one is required" .what) }}{{ end -}}
{{- join "," .list -}}
{{- end -}}
