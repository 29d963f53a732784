{{/*
The auth-sidecar container and its volumes, as reusable partials. This chart's own
Deployment uses them; another chart can place auth-sidecar beside its chat backend with

  containers:   (or initContainers: with sidecar.native: true)
    - name: chat
      ...
    {{- include "auth-sidecar.container" (index .Subcharts "auth-sidecar") | nindent 4 }}
  volumes:
    {{- include "auth-sidecar.volumes" (index .Subcharts "auth-sidecar") | nindent 4 }}

and the pod annotations from "auth-sidecar.podAnnotations". Both render YAML list items.
*/}}

{{/* Fails the render early with a clear message for values that cannot work. */}}
{{- define "auth-sidecar.validate" -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) }}
{{- fail (printf "mode must be gateway or sidecar, got %q" (toString .Values.mode)) }}
{{- end }}
{{- if not (has .Values.secrets.mountAs (list "file" "env")) }}
{{- fail (printf "secrets.mountAs must be file or env, got %q" (toString .Values.secrets.mountAs)) }}
{{- end }}
{{- range $key, $path := dict "secrets.mountPath" .Values.secrets.mountPath "tls.mountPath" .Values.tls.mountPath }}
{{- if not (regexMatch "^/etc/auth-sidecar/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$" $path) }}
{{- fail (printf "%s must be a directory under /etc/auth-sidecar/ (it is part of the config volume), got %q" $key $path) }}
{{- end }}
{{- if or (contains "/../" (printf "%s/" $path)) (contains "/./" (printf "%s/" $path)) (hasPrefix "/etc/auth-sidecar/keys" $path) }}
{{- fail (printf "%s: %q is not allowed" $key $path) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (include "auth-sidecar.ownsDeployment" .) }}
{{- $b := .Values.sidecar.backendContainer | default dict }}
{{- if not (and $b.name $b.image) }}
{{- fail "sidecar.backendContainer needs at least name and image (your chat backend container), or set sidecar.deployment: false and include the \"auth-sidecar.container\" template from your own chart" }}
{{- end }}
{{- if eq $b.name "auth-sidecar" }}
{{- fail "sidecar.backendContainer.name must not be auth-sidecar" }}
{{- end }}
{{- end }}
{{- $cfg := .Values.config | default dict }}
{{- if and (get $cfg "app_identity") (not (get $cfg "initiate")) }}
{{- fail "config.app_identity needs config.initiate: app identity tokens start sessions through the initiate call" }}
{{- end }}
{{- $_ := include "auth-sidecar.secretData" . }}
{{- $_ := include "auth-sidecar.tlsSecretData" . }}
{{- $_ := include "auth-sidecar.terminationGracePeriodSeconds" . }}
{{- end }}

{{- define "auth-sidecar.container" -}}
{{- include "auth-sidecar.validate" . -}}
- name: auth-sidecar
  image: {{ include "auth-sidecar.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}
  # Native sidecar: started before the backend, stopped after it (Kubernetes 1.29+).
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - {{ include "auth-sidecar.configPath" . }}
  ports:
    - name: proxy
      containerPort: {{ .Values.ports.proxy }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  {{- $secretEnv := list }}
  {{- if eq .Values.secrets.mountAs "env" }}
  {{- $secretEnv = include "auth-sidecar.managedSecrets" . | fromJsonArray }}
  {{- end }}
  {{- if or $secretEnv .Values.extraEnv }}
  env:
    {{- range $secretEnv }}
    - name: {{ .env }}
      valueFrom:
        secretKeyRef:
          name: {{ include "auth-sidecar.secretName" $ }}
          key: {{ .secretKey }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  volumeMounts:
    - name: auth-sidecar-config
      mountPath: {{ include "auth-sidecar.configDir" . }}
      readOnly: true
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if .Values.startupProbe.enabled }}
  startupProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: {{ .Values.startupProbe.periodSeconds }}
    timeoutSeconds: {{ .Values.startupProbe.timeoutSeconds }}
    failureThreshold: {{ .Values.startupProbe.failureThreshold }}
  {{- end }}
  {{- if .Values.livenessProbe.enabled }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: {{ .Values.livenessProbe.periodSeconds }}
    timeoutSeconds: {{ .Values.livenessProbe.timeoutSeconds }}
    failureThreshold: {{ .Values.livenessProbe.failureThreshold }}
  {{- end }}
  {{- if .Values.readinessProbe.enabled }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: {{ .Values.readinessProbe.periodSeconds }}
    timeoutSeconds: {{ .Values.readinessProbe.timeoutSeconds }}
    failureThreshold: {{ .Values.readinessProbe.failureThreshold }}
    successThreshold: {{ .Values.readinessProbe.successThreshold }}
  {{- end }}
  {{- if gt (int .Values.lifecycle.preStopSleepSeconds) 0 }}
  lifecycle:
    # Endpoint removal propagates during this sleep; SIGTERM then drains for
    # server.shutdown_grace ({{ include "auth-sidecar.drainSeconds" . }}s).
    preStop:
      sleep:
        seconds: {{ int .Values.lifecycle.preStopSleepSeconds }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationMessagePolicy: FallbackToLogsOnError
{{- end }}

{{/*
One read-only projected volume at /etc/auth-sidecar: config.toml and keys/ from the
ConfigMap, the secret files from the Secret, tls/ from the TLS Secret. One volume means no
mount nested inside another read-only mount.
*/}}
{{- define "auth-sidecar.volumes" -}}
{{- $dir := printf "%s/" (include "auth-sidecar.configDir" .) }}
{{- $fileSecrets := list }}
{{- if eq .Values.secrets.mountAs "file" }}
{{- $fileSecrets = include "auth-sidecar.managedSecrets" . | fromJsonArray }}
{{- end -}}
- name: auth-sidecar-config
  projected:
    defaultMode: 292 # 0444
    sources:
      - configMap:
          name: {{ include "auth-sidecar.configMapName" . }}
          items:
            - key: config.toml
              path: config.toml
            {{- range (include "auth-sidecar.keyFiles" . | fromJsonArray) }}
            - key: {{ .configKey }}
              path: {{ .path }}
            {{- end }}
      {{- if $fileSecrets }}
      - secret:
          name: {{ include "auth-sidecar.secretName" . }}
          items:
            {{- range $fileSecrets }}
            - key: {{ .secretKey }}
              path: {{ trimPrefix $dir $.Values.secrets.mountPath }}/{{ .file }}
              mode: {{ int $.Values.secrets.fileMode }}
            {{- end }}
      {{- end }}
      {{- if .Values.tls.enabled }}
      - secret:
          name: {{ include "auth-sidecar.tlsSecretName" . }}
          items:
            - key: tls.crt
              path: {{ trimPrefix $dir .Values.tls.mountPath }}/tls.crt
            - key: tls.key
              path: {{ trimPrefix $dir .Values.tls.mountPath }}/tls.key
              mode: {{ int .Values.secrets.fileMode }}
      {{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
