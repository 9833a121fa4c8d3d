{{/* The name of every object: the release name, unless it already says tokenbus. */}}
{{- define "tokenbus.fullname" -}}
{{- if contains "tokenbus" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tokenbus" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the refresher's pods: stable across upgrades. */}}
{{- define "tokenbus.selectorLabels" -}}
app.kubernetes.io/name: tokenbus-refresher
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenbus.labels" -}}
{{ include "tokenbus.selectorLabels" . }}
app.kubernetes.io/component: refresher
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tokenbus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tokenbus.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenbus.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The environment variable that carries sealing key ID. */}}
{{- define "tokenbus.sealingKeyEnv" -}}
{{- printf "TOKENBUS_SEALING_KEY_%s" (. | upper | replace "-" "_" | replace "." "_") -}}
{{- end -}}

{{/*
The refresher's configuration: the values' config, with the nats and http
parts the chart owns. Secrets are ${NAME} references to environment variables
that the Deployment fills from Secrets.
*/}}
{{- define "tokenbus.config" -}}
{{- range $k := list "nats" "http" -}}
{{- if hasKey $.Values.config $k -}}
{{- fail (printf "config.%s: the chart writes it; set the top-level %s values instead" $k $k) -}}
{{- end -}}
{{- end -}}
{{- if not (or .Values.config.providers .Values.sealingKeys) -}}
{{- fail "config.providers: at least one provider is required (or sealingKeys, for runtime providers only)" -}}
{{- end -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $nats := dict "url" .Values.nats.url "replicas" .Values.nats.replicas -}}
{{- if .Values.nats.user -}}
{{- $_ := set $nats "user" .Values.nats.user -}}
{{- if not .Values.nats.passwordSecret.name -}}
{{- fail "nats.passwordSecret.name: nats.user needs a password from a Secret" -}}
{{- end -}}
{{- $_ := set $nats "password" "${TOKENBUS_NATS_PASSWORD}" -}}
{{- end -}}
{{- if .Values.nats.credsSecret.name -}}
{{- if .Values.nats.user -}}
{{- fail "nats.credsSecret.name: conflicts with nats.user; authenticate one way only" -}}
{{- end -}}
{{- $_ := set $nats "creds" (printf "/etc/tokenbus/nats-creds/%s" .Values.nats.credsSecret.key) -}}
{{- end -}}
{{- if .Values.nats.tlsSecret.name -}}
{{- $tls := dict "ca" "/etc/tokenbus/nats-tls/ca.crt" -}}
{{- if .Values.nats.tlsSecret.clientCert -}}
{{- $_ := set $tls "cert" "/etc/tokenbus/nats-tls/tls.crt" -}}
{{- $_ := set $tls "key" "/etc/tokenbus/nats-tls/tls.key" -}}
{{- end -}}
{{- $_ := set $nats "tls" $tls -}}
{{- end -}}
{{- $_ := set $cfg "nats" $nats -}}
{{- $_ := set $cfg "http" (dict "listen" (printf "0.0.0.0:%d" (int .Values.http.port))) -}}
{{- if .Values.sealingKeys -}}
{{- $creds := get $cfg "credentials" | default dict -}}
{{- if hasKey $creds "keys" -}}
{{- fail "config.credentials.keys: set sealingKeys instead (the keys come from Secrets)" -}}
{{- end -}}
{{- $keys := list -}}
{{- range .Values.sealingKeys -}}
{{- $keys = append $keys (dict "id" .id "key" (printf "${%s}" (include "tokenbus.sealingKeyEnv" .id))) -}}
{{- end -}}
{{- $_ := set $creds "keys" $keys -}}
{{- $_ := set $cfg "credentials" $creds -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
