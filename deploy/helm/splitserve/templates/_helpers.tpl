{{- define "splitserve.labels" -}}
{app.kubernetes.io/name: splitserve, app.kubernetes.io/instance: {{ .Release.Name }}}
{{- end }}

{{- /* The container probe: kubelet's own gRPC probe is plaintext only, so with TLS the
       probe runs the package's health check inside the container. */ -}}
{{- define "splitserve.probe" -}}
{{- if .Values.tls.secret -}}
exec:
  command:
    - python
    - -m
    - splitserve.edge_server.healthcheck
    - --port
    - "50051"
    - --ca-cert
    - /secrets/tls/{{ .Values.tls.caKey }}
    - --server-name
    - {{ default (printf "%s-edge-server" .Release.Name) .Values.tls.serverName | quote }}
timeoutSeconds: 5
{{- else -}}
grpc: {port: 50051}
{{- end }}
{{- end }}
