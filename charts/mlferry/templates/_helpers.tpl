{{/*
Names the generated Argo YAML refers to: workflows.bundle.Bundle's defaults. They are
constants, not values, because the generated objects are embedded unchanged; a different name
here would point at nothing. tests/test_charts.py checks them against generated/.
*/}}
{{- define "mlferry.workflowServiceAccount" -}}mlferry-workflow{{- end }}
{{- define "mlferry.sensorServiceAccount" -}}mlferry-sensor{{- end }}
{{- define "mlferry.configMap" -}}mlferry-config{{- end }}
{{- /* The steps image and pull policy every generated script template names (Bundle.image,
Bundle.image_pull_policy): generated.yaml replaces exactly these strings with the image values. */}}
{{- define "mlferry.generatedImage" -}}ghcr.io/mlferry/mlferry-steps:{{ .Chart.AppVersion }}{{- end }}
{{- define "mlferry.generatedPullPolicy" -}}IfNotPresent{{- end }}

{{/*
The images, from where you pushed them: image.registry holds both, tagged image.tag (the
chart's appVersion, which is the package version, when empty). image.repository names the
steps image in full, settings.serving_image the serving image in full.
*/}}
{{- define "mlferry.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end }}

{{- define "mlferry.stepsImage" -}}
{{- $repository := .Values.image.repository | default (printf "%s/mlferry-steps" .Values.image.registry) -}}
{{- printf "%s:%s" $repository (include "mlferry.imageTag" .) -}}
{{- end }}

{{- define "mlferry.servingImage" -}}
{{- .Values.settings.serving_image | default (printf "%s/mlferry-serving:%s" .Values.image.registry (include "mlferry.imageTag" .)) -}}
{{- end }}

{{/*
Existing Secrets the bundle's pods read (workflows/tasks.py step_env), name → keys; the
optional ones only when that server needs a credential. Referenced, never created here.
*/}}
{{- define "mlferry.secrets" -}}
mlferry-s3: {keys: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY], optional: false}
mlferry-webhook: {keys: [MLFERRY_WEBHOOK_SECRET], optional: false}
mlferry-mlflow: {keys: [MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD], optional: true}
mlferry-git: {keys: [MLFERRY_GIT_TOKEN, MLFERRY_GIT_SSH_PRIVATE_KEY, MLFERRY_GIT_SSH_KNOWN_HOSTS], optional: true}
mlferry-notify: {keys: [MLFERRY_NOTIFY_URL], optional: true}
{{- end }}

{{- define "mlferry.labels" -}}
app.kubernetes.io/name: mlferry
app.kubernetes.io/part-of: mlferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
mlferry.io/team: {{ .Values.settings.team }}
{{- end }}

{{- define "mlferry.trackingUri" -}}
{{- .Values.mlflowTrackingUri | default (printf "http://mlflow.%s.svc:5000" .Release.Namespace) -}}
{{- end }}

{{- define "mlferry.s3Endpoint" -}}
{{- .Values.s3Endpoint | default (printf "http://minio.%s.svc:9000" .Release.Namespace) -}}
{{- end }}

{{/* An environment's serving namespace: include "mlferry.servingNamespace" (list $ ENV). */}}
{{- define "mlferry.servingNamespace" -}}
{{- $root := index . 0 }}{{ $env := index . 1 }}
{{- (index $root.Values.settings.environments $env).namespace | default (printf "%s-%s" $root.Values.settings.team $env) -}}
{{- end }}

{{/*
Where an environment's model servers reach the object store (steps.settings.Settings.serving_endpoint,
with the ConfigMap's default): include "mlferry.servingEndpoint" (list $ ENV).
*/}}
{{- define "mlferry.servingEndpoint" -}}
{{- $root := index . 0 }}{{ $env := index . 1 }}
{{- (index $root.Values.settings.environments $env).s3_endpoint | default $root.Values.settings.s3_endpoint | default (include "mlferry.s3Endpoint" $root) -}}
{{- end }}

{{/* The generated objects, parsed: a list of {path, doc}. */}}
{{- define "mlferry.generatedDocs" -}}
{{- $docs := list }}
{{- range $path, $_ := .Files.Glob "generated/*.yaml" }}
{{- $docs = append $docs (dict "path" $path "doc" ($.Files.Get $path | fromYaml)) }}
{{- end }}
{{- toJson $docs }}
{{- end }}

{{/*
Names of the generated objects of one kind, as a JSON list: include "mlferry.generatedNames"
(list $ "WorkflowTemplate").
*/}}
{{- define "mlferry.generatedNames" -}}
{{- $root := index . 0 }}
{{- $names := list }}
{{- range include "mlferry.generatedDocs" $root | fromJsonArray }}
{{- if eq .doc.kind (index $ 1) }}
{{- $names = append $names .doc.metadata.name }}
{{- end }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
The generated WorkflowTemplates offer `env` as a fixed choice, taken from the settings they were
generated with. Settings with other environments would render folders no template can
promote to, so they fail the install instead.
*/}}
{{- define "mlferry.checkEnvironments" -}}
{{- $envs := keys .Values.settings.environments | sortAlpha }}
{{- range include "mlferry.generatedDocs" . | fromJsonArray }}
{{- $path := .path }}
{{- range dig "spec" "arguments" "parameters" list .doc }}
{{- if and (eq .name "env") .enum }}
{{- if ne (sortAlpha .enum | toJson) (toJson $envs) }}
{{- fail (printf "settings.environments are %v, but %s offers env %v: regenerate it (`mlferry generate`) from the same settings" $envs $path (sortAlpha .enum)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The ApplicationSet derives each Application's namespace from its folder's last segment:
<team>-<env>. An environment with another namespace would be rendered into a namespace its
Application cannot deploy to, so that fails here.
*/}}
{{- define "mlferry.checkNamespaces" -}}
{{- range $env, $cfg := .Values.settings.environments }}
{{- $want := printf "%s-%s" $.Values.settings.team $env }}
{{- if and $cfg.namespace (ne $cfg.namespace $want) }}
{{- fail (printf "settings.environments.%s.namespace is %q; with argocd.enabled it must be empty or %q (the ApplicationSet derives it from the folder)" $env $cfg.namespace $want) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mlferry.argocdRepoURL" -}}
{{- .Values.argocd.repoURL | default .Values.settings.gitops_repo -}}
{{- end }}

{{- define "mlferry.argocdRevision" -}}
{{- .Values.argocd.targetRevision | default .Values.settings.gitops_branch -}}
{{- end }}

{{/*
Where MLflow delivers webhooks: webhook.url first, else the generated
EventSource's Service (Argo Events names it <eventsource>-eventsource-svc), else "".
*/}}
{{- define "mlferry.webhookURL" -}}
{{- if .Values.webhook.url }}
{{- .Values.webhook.url }}
{{- else }}
{{- $url := "" }}
{{- range include "mlferry.generatedDocs" . | fromJsonArray }}
{{- if and (eq .doc.kind "EventSource") (not $url) }}
{{- $name := .doc.metadata.name }}
{{- range $_, $hook := (dig "spec" "webhook" dict .doc) }}
{{- if not $url }}
{{- $url = printf "http://%s-eventsource-svc.%s.svc:%v%s" $name $.Release.Namespace $hook.port $hook.endpoint }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $url }}
{{- end }}
{{- end }}
