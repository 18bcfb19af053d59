{{- define "infra.name" -}}{{ .Release.Name }}-infra-controller{{- end -}}
{{- define "infra.labels" -}}
app.kubernetes.io/name: infra-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "infra.selector" -}}
app.kubernetes.io/name: infra-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "infra.apiKeySecret" -}}{{ default (printf "%s-api-key" (include "infra.name" .)) .Values.api.existingSecret }}{{- end -}}
