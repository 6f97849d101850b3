{{- define "restrav.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "restrav.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "restrav.env" -}}
{{- if .Values.redis.existingSecret }}
- name: RESTRAV_REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
- name: RESTRAV_REDIS__URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
- name: RESTRAV_MODEL__REF
  value: {{ .Values.models.modelRef | quote }}
{{- with .Values.models.classifierPath }}
- name: RESTRAV_CLASSIFIER__PATH
  value: {{ . | quote }}
{{- end }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: MALLOC_ARENA_MAX   # decode threads fragment glibc arenas otherwise (BENCHMARKS.md)
  value: "2"
{{- end -}}

{{- define "restrav.volumes" -}}
- name: settings
  configMap:
    name: {{ include "restrav.fullname" . }}
- name: models
{{- if .Values.models.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
    readOnly: true
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}
