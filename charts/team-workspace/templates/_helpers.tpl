{{/*
Service names are fixed: the mlferry chart's defaults (and the bundle's) point at
http://mlflow.<namespace>.svc:5000 and http://minio.<namespace>.svc:9000.
*/}}
{{- define "ws.mlflowPort" -}}5000{{- end }}
{{- define "ws.minioPort" -}}9000{{- end }}
{{- define "ws.minioConsolePort" -}}9001{{- end }}

{{- define "ws.labels" -}}
app.kubernetes.io/part-of: team-workspace
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels of one component: include "ws.selector" (list $ "mlflow") */}}
{{- define "ws.selector" -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
{{- end }}

{{/* Pod-level security context shared by every pod: non-root, no privilege, default seccomp. */}}
{{- define "ws.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ws.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Host headers MLflow answers: its Service names in this namespace, localhost
(port-forward), and allowedHosts. MLflow refuses other Host headers (DNS rebinding). */}}
{{- define "ws.mlflowAllowedHosts" -}}
{{- $port := include "ws.mlflowPort" . }}
{{- $hosts := list "localhost" "localhost:*" "127.0.0.1" "127.0.0.1:*" }}
{{- range list "mlflow" (printf "mlflow.%s" .Release.Namespace) (printf "mlflow.%s.svc" .Release.Namespace) (printf "mlflow.%s.svc.cluster.local" .Release.Namespace) }}
{{- $hosts = concat $hosts (list . (printf "%s:%s" . $port)) }}
{{- end }}
{{- concat $hosts .Values.mlflow.allowedHosts | join "," }}
{{- end }}

{{/* Pod labels as a selector reads: {a=b,c=d}. */}}
{{- define "ws.podLabels" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}
{{- printf "{%s}" (join "," $pairs) }}
{{- end }}
