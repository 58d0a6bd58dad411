{{/* The release's full name: the release name, with the chart's appended unless it already holds it. */}}
{{- define "tether-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. Deliberately not app.kubernetes.io/managed-by: tether,
     which marks the objects the agent applies and prunes. */}}
{{- define "tether-agent.labels" -}}
{{ include "tether-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tether-agent.serviceAccountName" -}}
{{- default (include "tether-agent.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "tether-agent.identitySecretName" -}}
{{- default (printf "%s-identity" (include "tether-agent.fullname" .)) .Values.identitySecret.name -}}
{{- end -}}

{{- define "tether-agent.auditSecretName" -}}
{{- default (printf "%s-audit-webhook" (include "tether-agent.fullname" .)) .Values.audit.secretName -}}
{{- end -}}

{{- define "tether-agent.joinSecretName" -}}
{{- default (printf "%s-join" (include "tether-agent.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/* The hub's port: networkPolicy.hub.port, else the port in the join string
     (tether1. + base64url JSON {"hub": "host:port", …}), else the hub's default 8443. */}}
{{- define "tether-agent.hubPort" -}}
{{- if .Values.networkPolicy.hub.port -}}
{{- .Values.networkPolicy.hub.port -}}
{{- else if .Values.joinToken -}}
{{- $payload := trimPrefix "tether1." .Values.joinToken | replace "-" "+" | replace "_" "/" -}}
{{- $padded := printf "%s%s" $payload (repeat (int (mod (sub 4 (mod (len $payload) 4)) 4)) "=") -}}
{{- $join := $padded | b64dec | fromJson -}}
{{- if not (and (kindIs "map" $join) (hasKey $join "hub")) -}}
{{- fail "joinToken is not a readable Tether join string: copy it whole from `tether-hub token create`" -}}
{{- end -}}
{{- splitList ":" (get $join "hub") | last -}}
{{- else -}}
8443
{{- end -}}
{{- end -}}

{{/* Names the audit webhook's certificate covers besides the defaults the agent adds
     for a Service called tether-agent in POD_NAMESPACE. */}}
{{- define "tether-agent.auditSANs" -}}
{{- $name := include "tether-agent.fullname" . -}}
{{- $sans := list $name (printf "%s.%s" $name .Release.Namespace) (printf "%s.%s.svc" $name .Release.Namespace) (printf "%s.%s.svc.cluster.local" $name .Release.Namespace) -}}
{{- with .Values.audit.service.clusterIP }}{{ $sans = append $sans . }}{{ end -}}
{{- $sans = concat $sans .Values.audit.extraSANs -}}
{{- toJson ($sans | uniq) -}}
{{- end -}}
