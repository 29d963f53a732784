{{/*
Naming and labels. Every helper takes the chart's root context ("."); a parent chart
passes this chart's context as (index .Subcharts "auth-sidecar").
*/}}

{{- define "auth-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auth-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "auth-sidecar.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auth-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auth-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auth-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "auth-sidecar.labels" -}}
helm.sh/chart: {{ include "auth-sidecar.chart" . }}
{{ include "auth-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: {{ .Values.mode }}
app.kubernetes.io/part-of: auth-sidecar
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "auth-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "auth-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "auth-sidecar.configMapName" -}}
{{- include "auth-sidecar.fullname" . }}
{{- end }}

{{/* The Secret holding the HMAC secret and API keys: the chart's own or existingSecret. */}}
{{- define "auth-sidecar.secretName" -}}
{{- default (include "auth-sidecar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "auth-sidecar.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "auth-sidecar.fullname" . | trunc 59 | trimSuffix "-")) .Values.tls.existingSecret }}
{{- end }}

{{- define "auth-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when this chart renders a Deployment (and Service, HPA, ...). */}}
{{- define "auth-sidecar.ownsDeployment" -}}
{{- if or (eq .Values.mode "gateway") .Values.sidecar.deployment }}true{{ end }}
{{- end }}

{{/* Where the config lives in the pod; the image's CMD uses the same path. */}}
{{- define "auth-sidecar.configDir" -}}/etc/auth-sidecar{{- end }}
{{- define "auth-sidecar.configPath" -}}/etc/auth-sidecar/config.toml{{- end }}

{{/* host:port for a listener; IPv6 hosts get brackets. */}}
{{- define "auth-sidecar.listenAddr" -}}
{{- $host := index . 0 }}{{ $port := index . 1 }}
{{- if contains ":" $host }}{{ printf "[%s]:%d" $host (int $port) }}{{ else }}{{ printf "%s:%d" $host (int $port) }}{{ end }}
{{- end }}

{{/*
Duration string of the binary ("250ms", "30s", "5m", "2h", "7d") to whole seconds,
rounded up. Fails the render on anything else.
*/}}
{{- define "auth-sidecar.durationSeconds" -}}
{{- $d := toString . | trim }}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h|d)$" $d) }}
{{- fail (printf "config.server.shutdown_grace: %q is not a duration like 30s (units ms, s, m, h, d)" $d) }}
{{- end }}
{{- $n := regexFind "^[0-9]+" $d | int64 }}
{{- $unit := regexFind "[a-z]+$" $d }}
{{- if eq $unit "ms" }}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "s" }}{{ $n }}
{{- else if eq $unit "m" }}{{ mul $n 60 }}
{{- else if eq $unit "h" }}{{ mul $n 3600 }}
{{- else }}{{ mul $n 86400 }}
{{- end }}
{{- end }}

{{/* Drain period in seconds, from config.server.shutdown_grace (binary default 30s). */}}
{{- define "auth-sidecar.drainSeconds" -}}
{{- $server := .Values.config.server | default dict }}
{{- include "auth-sidecar.durationSeconds" (get $server "shutdown_grace" | default "30s") }}
{{- end }}

{{/* preStop sleep the chart adds to the backend container in sidecar mode. */}}
{{- define "auth-sidecar.backendPreStopSeconds" -}}
{{- if not (kindIs "invalid" .Values.sidecar.backendPreStopSleepSeconds) }}
{{- int .Values.sidecar.backendPreStopSleepSeconds }}
{{- else if .Values.sidecar.native }}
{{- int .Values.lifecycle.preStopSleepSeconds }}
{{- else }}
{{- add (int .Values.lifecycle.preStopSleepSeconds) (include "auth-sidecar.drainSeconds" . | int) }}
{{- end }}
{{- end }}

{{/*
Pod terminationGracePeriodSeconds. auth-sidecar needs preStop sleep + drain. In sidecar
mode the backend's preStop sleep counts too: a regular sidecar's backend sleeps alongside
(so the longer of the two), a native sidecar's backend is stopped first (so the sum).
The default adds lifecycle.terminationGraceMarginSeconds; an explicit value below the need
fails the render.
*/}}
{{- define "auth-sidecar.terminationGracePeriodSeconds" -}}
{{- $need := add (int .Values.lifecycle.preStopSleepSeconds) (include "auth-sidecar.drainSeconds" . | int) }}
{{- if eq .Values.mode "sidecar" }}
{{- $backend := include "auth-sidecar.backendPreStopSeconds" . | int }}
{{- if .Values.sidecar.native }}
{{- $need = add $need $backend }}
{{- else }}
{{- $need = max $need $backend }}
{{- end }}
{{- end }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $need (int .Values.lifecycle.terminationGraceMarginSeconds) }}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least %d: the preStop sleep plus config.server.shutdown_grace (and the backend's preStop sleep in sidecar mode)" (int .Values.terminationGracePeriodSeconds) (int $need)) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The secrets the config needs, as a JSON list of
{name, section, key, secretKey, value, file, env}. A secret is managed by the chart when the
config needs it and the user did not write a reference for it under config.
*/}}
{{- define "auth-sidecar.managedSecrets" -}}
{{- $cfg := .Values.config | default dict }}
{{- $auth := get $cfg "auth" | default dict }}
{{- $initiate := get $cfg "initiate" | default dict }}
{{- $refresh := get $cfg "refresh" | default dict }}
{{- $appIdentity := get $cfg "app_identity" | default dict }}
{{- $store := get $cfg "shared_store" | default dict }}
{{- $revocation := get $cfg "revocation" }}
{{- $algorithms := get $auth "algorithms" }}
{{- if kindIs "invalid" $algorithms }}{{ $algorithms = list "HS256" }}{{ end }}
{{- $wantsHmac := false }}
{{- range $algorithms }}{{ if hasPrefix "HS" (toString .) }}{{ $wantsHmac = true }}{{ end }}{{ end }}
{{- $specs := list }}
{{- if and $wantsHmac (not (get $auth "hmac_secret")) }}
{{- $specs = append $specs (dict "name" "hmacSecret" "section" "auth" "key" "hmac_secret" "file" "hmac-secret" "env" "AUTH_SIDECAR_HMAC_SECRET" "minBytes" 32) }}
{{- end }}
{{- if and $initiate (not (get $initiate "api_key")) }}
{{- $specs = append $specs (dict "name" "initiateApiKey" "section" "initiate" "key" "api_key" "file" "initiate-api-key" "env" "AUTH_SIDECAR_INITIATE_API_KEY" "minBytes" 1) }}
{{- end }}
{{- if and $refresh (get $refresh "api_key_header") (not (get $refresh "api_key")) }}
{{- $specs = append $specs (dict "name" "refreshApiKey" "section" "refresh" "key" "api_key" "file" "refresh-api-key" "env" "AUTH_SIDECAR_REFRESH_API_KEY" "minBytes" 1) }}
{{- end }}
{{- if and $appIdentity (not (get $appIdentity "secret")) }}
{{- $specs = append $specs (dict "name" "appIdentitySecret" "section" "app_identity" "key" "secret" "file" "app-identity-secret" "env" "AUTH_SIDECAR_APP_IDENTITY_SECRET" "minBytes" 32) }}
{{- end }}
{{- if $store }}
{{- if not (get $store "secret") }}
{{- $specs = append $specs (dict "name" "sharedStoreSecret" "section" "shared_store" "key" "secret" "file" "shared-store-secret" "env" "AUTH_SIDECAR_SHARED_STORE_SECRET" "minBytes" 32) }}
{{- end }}
{{- /* Optional: used when the value is set (the chart's Secret) or listed in
  secrets.existingSecretOptional (the chart cannot look inside an existing Secret). */}}
{{- range $name, $key := dict "sharedStoreUsername" "username" "sharedStorePassword" "password" }}
{{- $wanted := ternary (has $name ($.Values.secrets.existingSecretOptional | default list)) (ne (index $.Values.secrets $name | default "") "") (ne $.Values.secrets.existingSecret "") }}
{{- if and $wanted (not (get $store $key)) }}
{{- $specs = append $specs (dict "name" $name "section" "shared_store" "key" $key "file" (printf "shared-store-%s" $key) "env" (printf "AUTH_SIDECAR_SHARED_STORE_%s" (upper $key)) "minBytes" 1) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Optional: the revocation API is off without its secret, so it is used when set (or
  listed in secrets.existingSecretOptional). */}}
{{- if and $revocation (not (get $revocation "admin_secret")) }}
{{- $wanted := ternary (has "revocationAdminSecret" ($.Values.secrets.existingSecretOptional | default list)) (ne ($.Values.secrets.revocationAdminSecret | default "") "") (ne $.Values.secrets.existingSecret "") }}
{{- if $wanted }}
{{- $specs = append $specs (dict "name" "revocationAdminSecret" "section" "revocation" "key" "admin_secret" "file" "revocation-admin-secret" "env" "AUTH_SIDECAR_REVOCATION_ADMIN_SECRET" "minBytes" 16) }}
{{- end }}
{{- end }}
{{- $out := list }}
{{- range $specs }}
{{- $_ := set . "secretKey" (index $.Values.secrets.keys .name) }}
{{- $_ := set . "value" (index $.Values.secrets .name | default "") }}
{{- $out = append $out . }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Verification keys as a JSON list of {configKey, path} for the ConfigMap. */}}
{{- define "auth-sidecar.keyFiles" -}}
{{- $out := list }}
{{- if .Values.verificationKeys.jwks }}
{{- $out = append $out (dict "configKey" "jwks.json" "path" "keys/jwks.json" "data" .Values.verificationKeys.jwks) }}
{{- end }}
{{- range $name, $k := .Values.verificationKeys.pem }}
{{- if not (regexMatch "^[A-Za-z0-9_.-]+$" $name) }}
{{- fail (printf "verificationKeys.pem: %q is not a valid name (letters, digits, '-', '_', '.')" $name) }}
{{- end }}
{{- $out = append $out (dict "configKey" (printf "key-%s.pem" $name) "path" (printf "keys/%s.pem" $name) "data" (required (printf "verificationKeys.pem.%s.pem is required" $name) $k.pem) "kid" ($k.kid | default "")) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The effective config (JSON): .Values.config plus what the chart owns. Fails on values that
would put a secret in the ConfigMap or fight the chart.
*/}}
{{- define "auth-sidecar.effectiveConfig" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- range $s := list "server" "admin" "backend" "auth" }}
{{- if not (kindIs "map" (get $cfg $s)) }}{{ $_ := set $cfg $s (dict) }}{{ end }}
{{- end }}
{{- range $k := list "listen" }}
{{- if hasKey $cfg.server $k }}{{ fail "config.server.listen is set by the chart: use ports.proxy and listenHost" }}{{ end }}
{{- if hasKey $cfg.admin $k }}{{ fail "config.admin.listen is set by the chart: use ports.admin and listenHost" }}{{ end }}
{{- end }}
{{- if hasKey $cfg.server "tls" }}{{ fail "config.server.tls is set by the chart: use tls.enabled and tls.existingSecret or tls.cert/tls.key" }}{{ end }}
{{- $_ := set $cfg.server "listen" (include "auth-sidecar.listenAddr" (list .Values.listenHost .Values.ports.proxy)) }}
{{- $_ := set $cfg.admin "listen" (include "auth-sidecar.listenAddr" (list .Values.listenHost .Values.ports.admin)) }}
{{- if .Values.tls.enabled }}
{{- $_ := set $cfg.server "tls" (dict "cert_file" (printf "%s/tls.crt" .Values.tls.mountPath) "key_file" (printf "%s/tls.key" .Values.tls.mountPath)) }}
{{- end }}
{{- /* backend.url */}}
{{- $url := get $cfg.backend "url" | default "" }}
{{- if eq .Values.mode "sidecar" }}
{{- if not $url }}
{{- $url = printf "http://127.0.0.1:%d" (int .Values.sidecar.backendPort) }}
{{- else if not (regexMatch "^https?://(127\\.0\\.0\\.1|localhost|\\[::1\\])(:[0-9]+)?(/.*)?$" $url) }}
{{- fail (printf "config.backend.url: in sidecar mode the backend listens on localhost only, got %q" $url) }}
{{- end }}
{{- else if not $url }}
{{- fail "config.backend.url is required in gateway mode (the chat backend's in-cluster URL, e.g. http://chat.chat.svc.cluster.local:3000)" }}
{{- end }}
{{- $_ := set $cfg.backend "url" $url }}
{{- /* Secret references: refuse inline values, add the chart's references. */}}
{{- range $path := list "auth.hmac_secret" "initiate.api_key" "refresh.api_key" "app_identity.secret" "backend.client_key" "shared_store.secret" "shared_store.username" "shared_store.password" }}
{{- $parts := splitList "." $path }}
{{- $section := get $cfg (index $parts 0) }}
{{- if and (kindIs "map" $section) (hasKey $section (index $parts 1)) }}
{{- $ref := get $section (index $parts 1) }}
{{- if and (not (kindIs "map" $ref)) (not (kindIs "invalid" $ref)) }}
{{- fail (printf "config.%s: secrets are never inline; put the value in secrets.* (or write a {file: ...} / {env: ...} reference)" $path) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* shared_store.url: Redis, and no password inside it (it would land in the ConfigMap). */}}
{{- $store := get $cfg "shared_store" }}
{{- if and (kindIs "map" $store) $store }}
{{- $storeUrl := toString (get $store "url" | default "") }}
{{- if not $storeUrl }}
{{- fail "config.shared_store.url is required when config.shared_store is set (redis://host:6379/0, or rediss:// for TLS)" }}
{{- end }}
{{- if not (regexMatch "^rediss?://" $storeUrl) }}
{{- fail (printf "config.shared_store.url: %q is not a redis:// or rediss:// URL" $storeUrl) }}
{{- end }}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]*@" $storeUrl }}
{{- fail "config.shared_store.url: secrets are never inline; drop the password from the URL and put it in secrets.sharedStorePassword (the user name in secrets.sharedStoreUsername)" }}
{{- end }}
{{- end }}
{{- range (include "auth-sidecar.managedSecrets" . | fromJsonArray) }}
{{- $ref := dict }}
{{- if eq $.Values.secrets.mountAs "env" }}
{{- $_ := set $ref "env" .env }}
{{- else }}
{{- $_ := set $ref "file" (printf "%s/%s" $.Values.secrets.mountPath .file) }}
{{- end }}
{{- $_ := set (get $cfg .section) .key $ref }}
{{- end }}
{{- /* Verification keys from the ConfigMap. */}}
{{- range (include "auth-sidecar.keyFiles" . | fromJsonArray) }}
{{- $file := printf "%s/%s" (include "auth-sidecar.configDir" $) .path }}
{{- if eq .configKey "jwks.json" }}
{{- $_ := set $cfg.auth "jwks_file" $file }}
{{- else }}
{{- $entry := dict "file" $file }}
{{- if .kid }}{{ $_ := set $entry "kid" .kid }}{{ end }}
{{- $_ := set $cfg.auth "public_keys" (append (get $cfg.auth "public_keys" | default list) $entry) }}
{{- end }}
{{- end }}
{{- toJson $cfg }}
{{- end }}

{{/* config.toml, as mounted at /etc/auth-sidecar/config.toml. */}}
{{- define "auth-sidecar.configToml" -}}
# auth-sidecar config rendered by the {{ include "auth-sidecar.chart" . }} Helm chart.
# Secrets are references only (files under {{ .Values.secrets.mountPath }} or env vars).

{{ include "auth-sidecar.toml" (include "auth-sidecar.effectiveConfig" . | fromJson) | trim }}
{{- end }}

{{/*
A minimal TOML writer for the config's shape: root scalars and arrays, one [table] per
section, [[array]] for arrays of tables (routes), and inline values below that. Scalars go
through toJson, whose strings, integers, floats and booleans are valid TOML. null = unset.
*/}}
{{- define "auth-sidecar.toml" -}}
{{- $root := . }}
{{- range $k, $v := $root }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "auth-sidecar.toml.isTableArray" $v)) }}
{{ include "auth-sidecar.toml.key" $k }} = {{ include "auth-sidecar.toml.inline" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $root }}
{{- if and (kindIs "map" $v) $v }}

[{{ include "auth-sidecar.toml.key" $k }}]
{{- range $k2, $v2 := $v }}
{{- if not (kindIs "invalid" $v2) }}
{{ include "auth-sidecar.toml.key" $k2 }} = {{ include "auth-sidecar.toml.inline" $v2 }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k, $v := $root }}
{{- if include "auth-sidecar.toml.isTableArray" $v }}
{{- range $item := $v }}

[[{{ include "auth-sidecar.toml.key" $k }}]]
{{- range $k2, $v2 := $item }}
{{- if not (kindIs "invalid" $v2) }}
{{ include "auth-sidecar.toml.key" $k2 }} = {{ include "auth-sidecar.toml.inline" $v2 }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "auth-sidecar.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}
{{- $all := true }}
{{- range . }}{{ if not (kindIs "map" .) }}{{ $all = false }}{{ end }}{{ end }}
{{- if $all }}true{{ end }}
{{- end }}
{{- end }}

{{- define "auth-sidecar.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "auth-sidecar.toml.inline" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true }}
{{- range $k, $v := . }}
{{- if not (kindIs "invalid" $v) }}
{{- if not $first }},{{ end }}{{ $first = false }} {{ include "auth-sidecar.toml.key" $k }} = {{ include "auth-sidecar.toml.inline" $v }}
{{- end }}
{{- end }} }
{{- else if kindIs "slice" . -}}
[
{{- range $i, $v := . }}
{{- if $i }}, {{ end }}{{ include "auth-sidecar.toml.inline" $v }}
{{- end -}}
]
{{- else -}}
{{ toJson . }}
{{- end -}}
{{- end }}

{{/* Data of the chart's Secret (key -> value); empty when existingSecret is used. */}}
{{- define "auth-sidecar.secretData" -}}
{{- $data := dict }}
{{- if not .Values.secrets.existingSecret }}
{{- range (include "auth-sidecar.managedSecrets" . | fromJsonArray) }}
{{- $v := required (printf "secrets.%s is required: the config needs it (%s.%s), or set secrets.existingSecret" .name .section .key) .value }}
{{- if lt (len $v) (int .minBytes) }}
{{- fail (printf "secrets.%s must be at least %d bytes" .name (int .minBytes)) }}
{{- end }}
{{- $_ := set $data .secretKey $v }}
{{- end }}
{{- end }}
{{- toJson $data }}
{{- end }}

{{/* Data of the chart's TLS Secret; empty when tls.existingSecret is used or TLS is off. */}}
{{- define "auth-sidecar.tlsSecretData" -}}
{{- $data := dict }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- $_ := set $data "tls.crt" (required "tls.cert is required when tls.enabled and no tls.existingSecret" .Values.tls.cert) }}
{{- $_ := set $data "tls.key" (required "tls.key is required when tls.enabled and no tls.existingSecret" .Values.tls.key) }}
{{- end }}
{{- toJson $data }}
{{- end }}

{{/*
Pod annotations that roll the pods when the config or the secrets change. For an
existingSecret only its name is hashed: roll the pods yourself (or use a reloader) when
its content changes.
*/}}
{{- define "auth-sidecar.podAnnotations" -}}
checksum/config: {{ include "auth-sidecar.configMapData" . | sha256sum }}
checksum/secret: {{ list (include "auth-sidecar.secretData" .) (include "auth-sidecar.tlsSecretData" .) .Values.secrets.existingSecret .Values.tls.existingSecret | toJson | sha256sum }}
{{- end }}

{{/* data: of the ConfigMap: config.toml plus verification keys. */}}
{{- define "auth-sidecar.configMapData" -}}
config.toml: |
{{ include "auth-sidecar.configToml" . | indent 2 }}
{{- range (include "auth-sidecar.keyFiles" .) | fromJsonArray }}
{{ .configKey }}: |
{{ .data | trim | indent 2 }}
{{- end }}
{{- end }}
