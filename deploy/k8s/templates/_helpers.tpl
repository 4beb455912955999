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
{{- printf "http://%s-driver:%d" .Release.Name (int .Values.driver.grpcPort) -}}
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
