"""Real-process harness: the pinned Envoy binary with the built claimgate.wasm, a local JWKS
server, and a scoring upstream that echoes what it received.

Everything listens on 127.0.0.1 with ports picked by the OS. Tokens are minted by
`claimgate-testkit` (the workspace's test-only signer); policies are compiled by the real
`claimgate compile`, so Envoy sees exactly what a WasmPlugin would carry.
"""

import atexit
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "target"
CLAIMGATE = TARGET / "release" / "claimgate"
TESTKIT = TARGET / "release" / "claimgate-testkit"
WASM = TARGET / "wasm32-wasip1" / "release" / "claimgate_filter.wasm"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Upstream:
    """Scoring server: answers every request with the headers it received, as JSON."""

    def __init__(self):
        received = self.received = []

        class Handler(_Quiet):
            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {k.lower(): v for k, v in self.headers.items()}
                received.append(seen)
                out = json.dumps({"path": self.path, "headers": seen, "scored": len(body)}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _answer

        self.server = serve(Handler)
        self.port = self.server.server_address[1]

    def stop(self):
        self.server.shutdown()


class JwksServer:
    """Serves a key set that tests can rotate, or fail with 503 ("down"); `times` holds when
    each fetch came (time.monotonic())."""

    def __init__(self, jwks_text):
        self.jwks = jwks_text
        self.down = False
        self.hits = 0
        self.times = []
        owner = self

        class Handler(_Quiet):
            def do_GET(self):
                owner.hits += 1
                owner.times.append(time.monotonic())
                if owner.down:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                out = owner.jwks.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = serve(Handler)
        self.port = self.server.server_address[1]

    def stop(self):
        self.server.shutdown()


class Keys:
    """Signing keys made by claimgate-testkit in a scratch folder."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def make(self, alg, kid):
        subprocess.run([TESTKIT, "keygen", alg, kid, self.folder], check=True, capture_output=True)
        return json.loads((self.folder / f"{kid}.jwks.json").read_text())

    def mint(self, alg, kid, claims, header=None):
        args = [TESTKIT, "mint", alg, kid, self.folder, json.dumps(claims)]
        if header is not None:
            args.append(json.dumps(header))
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def compile_policy(policy_path):
    out = subprocess.run([CLAIMGATE, "compile", policy_path], check=True, capture_output=True, text=True)
    return out.stdout


# --- Envoy configuration pieces (shared by the tests, the local mesh and the benchmark) ---

ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def wasm_filter(plugin_config_json, fail_open=False):
    """The claimgate filter with its pluginConfig in a StringValue, as istiod delivers it."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "claimgate",
                "root_id": "claimgate",
                "fail_open": fail_open,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config_json},
                "vm_config": {"vm_id": "claimgate", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(WASM)}}},
            },
        },
    }


def access_log(line):
    """Envoy's stdout access log with one text line per request (`line` ends without newline)."""
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string": line + "\n"}},
        },
    }


def http_listener(name, port, http_filters, action, stat_prefix=None, logs=()):
    """A loopback listener whose one route sends everything to `action` (`{"route": …}` or
    `{"direct_response": …}`) through `http_filters` and the router."""
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix or name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **action}]}]},
        "http_filters": [*http_filters, ROUTER],
    }
    if logs:
        manager["access_log"] = list(logs)
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}],
    }


def static_cluster(name, port, address="127.0.0.1"):
    return {
        "name": name,
        "connect_timeout": "1s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}]}],
        },
    }


def admin(port):
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def envoy_config(plugin_config_json, listen_port, admin_port, upstream_port, jwks_port, fail_open=False):
    """Envoy bootstrap as JSON (YAML is a superset): the filter in front of the scoring server,
    a `jwks` cluster for the key server."""
    log = access_log("ACCESS %REQ(:PATH)% %RESPONSE_CODE% subject=%FILTER_STATE(wasm.claimgate.subject:PLAIN)% decision=%FILTER_STATE(wasm.claimgate.decision:PLAIN)%")
    return {
        "admin": admin(admin_port),
        "static_resources": {
            "listeners": [http_listener("ingress", listen_port, [wasm_filter(plugin_config_json, fail_open)], {"route": {"cluster": "scoring"}}, logs=[log])],
            "clusters": [static_cluster("scoring", upstream_port), static_cluster("jwks", jwks_port)],
        },
    }


def stop_process(proc, log=None):
    """Terminates a child process (killed after 10 s) and closes its log."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if log is not None:
        log.close()


def serve(handler_class):
    """A threaded HTTP server on a free loopback port, serving in the background."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Envoy:
    def __init__(self, binary, config, workdir, concurrency=1, log_args=("--log-level", "info")):
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        path = Path(workdir) / "envoy.json"
        path.write_text(json.dumps(config))
        self.log_path = Path(workdir) / "envoy.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "-c", str(path), "--concurrency", str(concurrency), *log_args, "--file-flush-interval-msec", "100", "--base-id", str(free_port())],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("envoy did not become ready:\n" + self.logs()[-4000:])

    def logs(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5) as r:
            lines = r.read().decode().splitlines()
        out = {}
        for line in lines:
            if ": " in line:
                k, v = line.split(": ", 1)
                out[k] = v
        return out

    def request(self, path, method="GET", headers=None, token=None, host="localhost", body=None):
        headers = dict(headers or {})
        headers["host"] = host
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        data = body.encode() if isinstance(body, str) else body
        if data is None and method == "POST":
            data = b"{}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, dict((k.lower(), v) for k, v in r.headers.items()), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict((k.lower(), v) for k, v in e.headers.items()), e.read().decode()

    def stop(self):
        stop_process(self.proc, self.log)


def envoy_binaries():
    """The pinned Envoy binaries installed by scripts/setup (ENVOY_BINS overrides)."""
    listed = os.environ.get("ENVOY_BINS")
    if listed:
        return [b for b in listed.split(":") if b]
    tools = ROOT / ".tools"
    found = sorted(tools.glob("envoy-*/lib/python3*/site-packages/envoy/_bin/envoy"))
    return [str(p) for p in found]


_SCRATCH = []


def scratch():
    """A scratch folder (policies, keys, Envoy configs and logs), removed when the Python
    process ends: every Envoy run left one behind, and a few hundred filled a CI disk.
    `CLAIMGATE_KEEP_SCRATCH=1` keeps them for a post-mortem."""
    path = tempfile.mkdtemp(prefix="claimgate-e2e-")
    _SCRATCH.append(path)
    return path


@atexit.register
def _remove_scratch():
    if os.environ.get("CLAIMGATE_KEEP_SCRATCH") != "1":
        for path in _SCRATCH:
            shutil.rmtree(path, ignore_errors=True)


# --- Filter fault tests (e2e/test_filter_faults.py) ---

TRAP_WASM = TARGET / "test-trap" / "wasm32-wasip1" / "release" / "claimgate_filter.wasm"


def wasm_filter_with(plugin_config_json, failure_policy=None, wasm=None):
    """`wasm_filter` with Envoy's `failure_policy` (FAIL_CLOSED, FAIL_OPEN, FAIL_RELOAD) and
    another module (e.g. the test-only trap build)."""
    filt = wasm_filter(plugin_config_json)
    config = filt["typed_config"]["config"]
    if failure_policy is not None:
        del config["fail_open"]
        config["failure_policy"] = failure_policy
    if wasm is not None:
        config["vm_config"]["code"]["local"]["filename"] = str(wasm)
    return filt


def envoy_config_with(plugin_config_json, listen_port, admin_port, upstream_port, jwks_port, failure_policy=None, wasm=None):
    """`envoy_config` with the filter from `wasm_filter_with`."""
    config = envoy_config(plugin_config_json, listen_port, admin_port, upstream_port, jwks_port)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"][0] = wasm_filter_with(plugin_config_json, failure_policy, wasm)
    return config


def raw_request(port, head, timeout=10):
    """Sends raw HTTP/1.1 request bytes (any header bytes, e.g. obs-text) and returns the
    status code (None when the connection closes without an answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
