{{- define "sluice.name" -}}{{ .Release.Name }}{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sluice.selector" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}{{ default (printf "%s-sluice" .Release.Name) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "sluice.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $name := printf "%s-etcd" .Release.Name -}}
{{- $endpoints := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $endpoints = append $endpoints (printf "http://%s-%d.%s:2379" $name $i $name) -}}
{{- end -}}
{{- join "," $endpoints -}}
{{- else -}}
{{- required "etcd.externalEndpoints is required when etcd.enabled is false" .Values.etcd.externalEndpoints -}}
{{- end -}}
{{- end -}}

{{- define "sluice.driverAddresses" -}}
{{- printf "%s://%s-driver:%d" (ternary "https" "http" (not (empty .Values.tls.secret))) .Release.Name (int .Values.driver.grpcPort) -}}
{{- end -}}

{{- define "sluice.volumeName" -}}
{{- if .Values.persistence.existingClaim -}}{{ .Values.persistence.existingClaim }}{{- else -}}{{ printf "%s-warehouse" .Release.Name }}{{- end -}}
{{- end -}}

{{- define "sluice.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* TLS environment of the driver and the executors (the Secret mounted at /etc/sluice/tls). */}}
{{- define "sluice.tlsEnv" -}}
{{- if .Values.tls.secret }}
- name: SLUICE_TLS_CERT
  value: /etc/sluice/tls/tls.crt
- name: SLUICE_TLS_KEY
  value: /etc/sluice/tls/tls.key
- name: SLUICE_TLS_CA
  value: /etc/sluice/tls/ca.crt
- name: SLUICE_TLS_SERVER_NAME
  value: {{ .Values.tls.serverName | quote }}
{{- if .Values.tls.mutual }}
- name: SLUICE_TLS_REQUIRE_CLIENT_CERT
  value: "true"
{{- end }}
{{- end }}
{{- end -}}
