#!/usr/bin/env bash
# Load benchmark: portcullis against nginx and HAProxy as reverse proxies, on this machine,
# in one run, all on loopback. Every proxy forwards to the same upstream (nginx answering a
# fixed 200), keeps upstream connections alive, and is measured with the same wrk command.
# Figures are printed as ratios to nginx measured in the same run; absolute numbers depend on
# the machine and on sharing its cores with wrk and the upstream.
#
# Usage: bench/load.sh [seconds per proxy (default 10)] [connections (default 64)]
# PORTCULLIS_WORKERS=N sets portcullis's worker threads (nginx and HAProxy run one worker).
# Needs: nginx, haproxy, wrk (Debian packages nginx-light, haproxy, wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-10}"
connections="${2:-64}"
target="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for tool in nginx haproxy wrk; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light haproxy wrk)" >&2; exit 1; }
done
cargo build --release -q -p portcullis

UPSTREAM=127.0.0.1:18080 PORTCULLIS=127.0.0.1:18081 NGINX=127.0.0.1:18082 HAPROXY=127.0.0.1:18083

# The upstream and the nginx proxy share one nginx process with two servers.
cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server $UPSTREAM; keepalive 64; }
  server { listen $UPSTREAM; location / { return 200 "ok\n"; } }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend bench
  bind $HAPROXY
  default_backend app
backend app
  http-reuse always
  server app $UPSTREAM
CONF
haproxy -f "$work/haproxy.cfg" & pids+=($!)

mkdir -p "$work/portcullis"
cat > "$work/portcullis/bench.yaml" <<CONF
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench, namespace: default}
spec:
  gatewayClassName: portcullis
  addresses: [{type: IPAddress, value: "${PORTCULLIS%:*}"}]
  listeners: [{name: http, port: ${PORTCULLIS#*:}, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules: [{backendRefs: [{name: app, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: default}
spec: {ports: [{port: 80, targetPort: ${UPSTREAM#*:}}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app, namespace: default, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{port: ${UPSTREAM#*:}}]
endpoints: [{addresses: ["${UPSTREAM%:*}"]}]
CONF
workers=()
[ -n "${PORTCULLIS_WORKERS:-}" ] && workers=(--workers "$PORTCULLIS_WORKERS")
PORTCULLIS_LOG=warn "$target/release/portcullis" run --config "$work/portcullis" --admin 127.0.0.1:18090 "${workers[@]}" & pids+=($!)
portcullis_pid=$!

for addr in $UPSTREAM $PORTCULLIS $NGINX $HAPROXY; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://$addr/" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://$addr/" || { echo "$addr does not answer" >&2; exit 1; }
done

rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }
nginx_master=$(cat "$work/nginx.pid")

declare -A rps p50 p99
for name in nginx haproxy portcullis; do
  case $name in nginx) addr=$NGINX ;; haproxy) addr=$HAPROXY ;; portcullis) addr=$PORTCULLIS ;; esac
  out=$(wrk -t2 -c"$connections" -d"${duration}s" --latency "http://$addr/")
  rps[$name]=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50[$name]=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99[$name]=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [ -n "$errors" ] && echo "$name: $errors"
done

printf '%-11s %12s %10s %10s %10s\n' proxy requests/s "vs nginx" p50 p99
for name in nginx haproxy portcullis; do
  ratio=$(awk -v a="${rps[$name]}" -v b="${rps[nginx]}" 'BEGIN {printf "%.2f", a / b}')
  printf '%-11s %12s %10s %10s %10s\n' "$name" "${rps[$name]}" "$ratio" "${p50[$name]}" "${p99[$name]}"
done
echo "portcullis RSS after the run: $(rss_kib "$portcullis_pid") KiB"
echo "(nginx serves the upstream too, so its RSS is not comparable; $duration s per proxy, $connections connections, wrk -t2)"
