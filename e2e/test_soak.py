"""Soak: a mixed stream of valid, wrong-role, expired, badly signed, junk, unknown-key and
token-less requests from many identities through real Envoy (one worker), loaded by wrk.

Checked: zero 5xx (every answer is the status its token calls for, in the proportions the
token list has), no Wasm VM created or lost, Envoy's resident memory flat after warm-up while
more distinct tokens pass than the filter's caches hold (so their bounds are exercised), and
the filter decided every request.

Short by default (`scripts/test`: SOAK_SECONDS=20 per Envoy version). Long runs:
`scripts/soak 10000000` (SOAK_REQUESTS answers on the newest Envoy, five times more
identities than the token cache holds).
"""

import base64
import hashlib
import hmac
import json
import os
import random
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import harness as h

HERE = Path(__file__).resolve().parent
NOW = int(time.time())
HS = "https://hs.example.com"
KC = "https://login.example.com/realms/ml"
AUD = "azureml-scoring"
SECRET = b"soak-suite-hmac-secret-32-bytes!"
SECONDS = int(os.environ.get("SOAK_SECONDS", "20"))
REQUESTS = int(os.environ.get("SOAK_REQUESTS", "0"))
SCALE = int(os.environ.get("SOAK_SCALE", "1"))
CONNECTIONS = 8
# The filter's bounds (filter/src/cache.rs): verified tokens, failed tokens.
TOKEN_CACHE_ENTRIES = 10_000
NEGATIVE_CACHE_ENTRIES = 4_096
# Resident memory after warm-up may move by at most this fraction (V8 heap and allocator noise).
RSS_TOLERANCE = 0.05

POLICY = """
version = 1
name = "soak"

[issuers.hs]
issuer      = "{hs}"
audiences   = ["{aud}"]
algorithms  = ["HS256"]
hmac_secret = "{secret}"
roles       = ["roles"]

[issuers.kc]
issuer     = "{kc}"
audiences  = ["{aud}"]
algorithms = ["ES256"]
roles      = ["realm_access.roles"]
[issuers.kc.jwks]
file = "kc.jwks.json"

[[rules]]
name  = "score"
paths = ["/score"]
allow = {{ roles_any = ["ml-scorer"] }}
"""


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


HS_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()


def hs_token(sub, roles=("ml-scorer",), exp_offset=3600):
    claims = {"iss": HS, "sub": sub, "aud": AUD, "iat": NOW - 10, "exp": NOW + exp_offset, "roles": list(roles)}
    signing_input = f"{HS_HEADER}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())}"


def flip_last(token):
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


def token_mix(keys, scale):
    """(token or "" for none, expected status) pairs, shuffled; more distinct identities than
    the caches hold when scale >= 2 (valid) / always (failures)."""
    rng = random.Random(8)
    mix = []
    valid = 3_000 * scale
    mix += [(hs_token(f"user-{i}"), 200) for i in range(valid)]
    for i in range(40):
        claims = {"iss": KC, "sub": f"kc-{i}", "aud": AUD, "iat": NOW - 10, "exp": NOW + 3600, "realm_access": {"roles": ["ml-scorer"]}}
        token = keys.mint("ES256", "kc-1", claims)
        mix += [(token, 200)] * 5
        mix.append((flip_last(token), 401))  # bad ES256 signature: a real verification each
    mix += [(hs_token(f"viewer-{i}", roles=("viewer",)), 403) for i in range(800 * scale)]
    mix += [(hs_token(f"old-{i}", exp_offset=-7200), 401) for i in range(800 * scale)]
    mix += [(flip_last(hs_token(f"forged-{i}")), 401) for i in range(2_500 * scale)]
    # A hot set of failing tokens sent again and again (a flood replaying a few junk tokens):
    # the negative cache answers these without verifying.
    hot = [flip_last(hs_token(f"replayed-{i}")) for i in range(300)]
    mix += [(t, 401) for t in hot for _ in range(10)]
    mix += [(f"{b64(rng.randbytes(20))}.{b64(rng.randbytes(60))}.{b64(rng.randbytes(32))}", 401) for i in range(1_500 * scale)]
    for i in range(20):
        claims = {"iss": KC, "sub": f"stray-{i}", "aud": AUD, "exp": NOW + 3600}
        mix.append((keys.mint("ES256", "stray", claims), 401))  # unknown kid
    mix += [("", 401)] * (400 * scale)
    rng.shuffle(mix)
    return mix


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def marker_in_file(path, marker):
    """Whether `marker` occurs in a (possibly large) log file, read in chunks."""
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if marker.encode() in tail + chunk:
                return True
            tail = chunk[-len(marker):]
    return False


def counter(stats, suffix):
    return sum(int(v) for k, v in stats.items() if k.endswith(suffix))


@pytest.mark.parametrize("binary", h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def test_soak(binary):
    if binary is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    assert subprocess.run(["wrk", "--version"], capture_output=True).returncode in (0, 1), "wrk missing: run scripts/setup"
    work = Path(h.scratch())
    keys = h.Keys(work)
    jwks = keys.make("ES256", "kc-1")
    keys.make("ES256", "stray")
    (work / "kc.jwks.json").write_text(json.dumps(jwks))
    policy = work / "policy.toml"
    policy.write_text(POLICY.format(hs=HS, kc=KC, aud=AUD, secret=b64(SECRET)))
    plugin_config = h.compile_policy(policy)
    ok = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    config = {
        "admin": h.admin(h.free_port()),
        "static_resources": {"listeners": [h.http_listener("soak", h.free_port(), [h.wasm_filter(plugin_config)], ok)]},
    }
    mix = token_mix(keys, SCALE)
    tokens_file = work / "tokens.txt"
    tokens_file.write_text("".join(t + "\n" for t, _ in mix))
    expected_share = {}
    for _, status in mix:
        expected_share[status] = expected_share.get(status, 0) + 1

    envoy = h.Envoy(binary, config, work, concurrency=1)
    try:
        envoy.wait_ready()
        # Warning level, as an Istio sidecar runs: info would write one audit line per request
        # (gigabytes over a long run). Traps and VM failures are logged above it.
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{envoy.admin_port}/logging?level=warning", method="POST"), timeout=5).read()
        vms_before = {k: v for k, v in envoy.stats().items() if k.startswith("wasm.envoy.wasm.runtime.")}
        duration = f"{SECONDS}s" if not REQUESTS else "24h"
        started = time.time()
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}", "--timeout", "10s", "-s", str(HERE / "soak" / "mix.lua"),
             f"http://127.0.0.1:{envoy.port}/score"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={"TOKENS_FILE": str(tokens_file), "SOAK_REQUESTS": str(REQUESTS), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        samples = []
        while wrk.poll() is None:
            samples.append((time.time() - started, rss_kib(envoy.proc.pid)))
            if REQUESTS and int(envoy.stats().get("http.soak.downstream_rq_completed", 0)) >= REQUESTS:
                wrk.send_signal(signal.SIGINT)  # wrk stops and prints its summary
                wrk.wait(60)
            time.sleep(0.5)
        out = wrk.stdout.read()
        elapsed = time.time() - started
        assert wrk.returncode == 0, out
        stats = envoy.stats()
        vms_after = {k: v for k, v in stats.items() if k.startswith("wasm.envoy.wasm.runtime.")}
        log_markers = [m for m in ["panicked", "wasm trap", "Wasm VM failed"] if marker_in_file(envoy.log_path, m)]
    finally:
        envoy.stop()

    counts = {int(s): int(n) for s, n in re.findall(r"^STATUS (\d+) (\d+)$", out, re.M)}
    sent = int(re.search(r"^SENT (\d+)$", out, re.M).group(1))
    p99_ms = int(re.search(r"^P99_US (\d+)$", out, re.M).group(1)) / 1000
    answered = sum(counts.values())
    socket_errors = re.search(r"Socket errors: (.*)", out)
    # Warm-up: the first 30% of the run (several passes over the token list).
    steady = [rss for t, rss in samples if t >= 0.3 * elapsed]
    first_window = steady[: max(1, len(steady) // 5)]
    last_window = steady[-max(1, len(steady) // 5):]
    growth = (sum(last_window) / len(last_window)) / (sum(first_window) / len(first_window)) - 1
    spread = (max(steady) - min(steady)) / min(steady)
    figures = {
        "envoy": Path(binary).parts[-7], "seconds": round(elapsed, 1), "answered": answered, "rps": round(answered / elapsed),
        "p99_ms": p99_ms, "statuses": counts, "distinct_tokens": len(set(t for t, _ in mix)),
        "rss_mib_after_warmup": [round(min(steady) / 1024, 1), round(max(steady) / 1024, 1)], "rss_growth": round(growth, 4),
        "rss_spread": round(spread, 4), "cache_hit": counter(stats, "claimgate.token_cache_hit_total"),
        "cache_miss": counter(stats, "claimgate.token_cache_miss_total"), "negative_cache_hit": counter(stats, "claimgate.negative_cache_hit_total"),
        "allowed": counter(stats, "claimgate.allowed_total"), "denied": sum(int(v) for k, v in stats.items() if k.endswith(";.;denied_total")),
        "envoy_5xx": int(stats.get("http.soak.downstream_rq_5xx", 0)),
    }
    print("\nSOAK " + json.dumps(figures))

    assert socket_errors is None, socket_errors.group(0)
    assert set(counts) <= {200, 401, 403}, counts
    assert figures["envoy_5xx"] == 0
    # Each token is sent k or k+1 times (wrk walks the list in order); up to CONNECTIONS
    # requests were still in flight at the end.
    k = sent // len(mix)
    for status, n in expected_share.items():
        assert k * n - CONNECTIONS <= counts.get(status, 0) <= (k + 1) * n, (status, counts, expected_share, sent)
    assert k >= 2, f"only {sent} requests for {len(mix)} tokens: the run is too short to reach steady state"
    # The filter decided every request (plus the readiness probe's none).
    assert figures["allowed"] + figures["denied"] >= answered, figures
    assert figures["cache_hit"] > 0 and figures["negative_cache_hit"] > 0, figures
    assert vms_after == vms_before, (vms_before, vms_after)
    assert not log_markers, log_markers
    # More distinct failures than the negative cache holds; memory flat all the same.
    assert len(set(t for t, s in mix if s == 401 and t)) > NEGATIVE_CACHE_ENTRIES
    if SCALE >= 4:
        assert len(set(t for t, s in mix if s == 200)) > TOKEN_CACHE_ENTRIES
    assert growth <= RSS_TOLERANCE and spread <= RSS_TOLERANCE * 2, figures
