"""Faults around the filter in real Envoy (1.36 and 1.40): a JWKS endpoint that is down,
slow, wrong or hostile; keys rotated under traffic; a client hanging up during a refetch;
header bytes that trapped the VM; and what Envoy's `failure_policy` does after a VM trap.

Each test starts its own Envoy, so no fetch schedule or cache leaks between tests.
"""

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness as h

ISS = "https://idp.test/realms/ml"
# Unknown-kid refetches are at most one per 10 s per worker (the filter's rate limit).
REFETCH_INTERVAL = 10

POLICY = """
version = 1
name = "faults"

[issuers.idp]
issuer     = "{iss}"
audiences  = ["scoring"]
algorithms = ["ES256"]
roles      = ["roles"]
[issuers.idp.jwks]
uri     = "http://127.0.0.1:{port}/keys"
cluster = "jwks"
refresh = "10s"
timeout = "2s"

[[rules]]
name  = "score"
paths = ["/score"]
allow = {{ roles_any = ["ml-scorer"] }}

[[rules]]
name  = "health"
paths = ["/health"]
allow = "anyone"
"""


class FaultyJwks:
    """A JWKS endpoint whose answer the test chooses: `ok` (the key set), `down` (503),
    `slow` (the key set after `delay` seconds), `html`, `empty`, `huge` (5 MiB of
    unsupported keys), `unsupported` (only keys of an unknown `kty`)."""

    def __init__(self, jwks_text):
        self.jwks = jwks_text
        self.mode = "ok"
        self.delay = 0.0
        self.hits = 0
        owner = self

        class Handler(h._Quiet):
            def do_GET(self):
                owner.hits += 1
                mode = owner.mode
                if mode == "slow":
                    time.sleep(owner.delay)
                status, ctype, body = 200, "application/json", owner.jwks.encode()
                if mode == "down":
                    status, body = 503, b""
                elif mode == "html":
                    ctype, body = "text/html", b"<html><body>Sign in to continue</body></html>"
                elif mode == "empty":
                    body = b'{"keys":[]}'
                elif mode == "huge":
                    body = ('{"keys":[' + ",".join(['{"kty":"oct","k":"AA"}'] * 175_000) + "]}").encode()
                elif mode == "unsupported":
                    body = ('{"keys":[' + ",".join(['{"kty":"XYZ","kid":"k%d"}' % i for i in range(60)]) + "]}").encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = h.serve(Handler)
        self.port = self.server.server_address[1]

    def wait_hits(self, more_than, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.hits > more_than:
                return self.hits
            time.sleep(0.05)
        raise AssertionError(f"no JWKS fetch within {timeout}s (hits {self.hits})")

    def stop(self):
        self.server.shutdown()


class Setup:
    """Keys, a key server, a scoring upstream and an Envoy running the filter."""

    def __init__(self, binary, mode="ok", failure_policy=None, wasm=None):
        for needed in (h.CLAIMGATE, h.TESTKIT, wasm or h.WASM):
            assert Path(needed).exists(), f"{needed} missing: run scripts/setup"
        self.work = Path(h.scratch())
        self.keys = h.Keys(self.work)
        self.jwk = {kid: self.keys.make("ES256", kid)["keys"][0] for kid in ("k1", "k2", "k3")}
        self.idp = FaultyJwks(self.key_set("k1"))
        self.idp.mode = mode
        self.upstream = h.Upstream()
        policy = self.work / "policy.toml"
        policy.write_text(POLICY.format(iss=ISS, port=self.idp.port))
        config = h.envoy_config_with(h.compile_policy(policy), h.free_port(), h.free_port(), self.upstream.port, self.idp.port,
                                     failure_policy=failure_policy, wasm=wasm)
        self.envoy = h.Envoy(binary, config, self.work)
        self.envoy.wait_ready()

    def key_set(self, *kids):
        return json.dumps({"keys": [self.jwk[k] for k in kids]})

    def token(self, kid="k1", **extra):
        now = int(time.time())
        claims = {"iss": ISS, "sub": "alice", "aud": "scoring", "iat": now - 5, "exp": now + 600, "roles": ["ml-scorer"]}
        claims.update(extra)
        return self.keys.mint("ES256", kid, claims)

    def score(self, token=None, timeout=20):
        headers = {"host": "scoring.test"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.envoy.port}/score", data=b"{}", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def logs(self):
        time.sleep(0.3)  # the log is flushed every 100 ms
        return self.envoy.logs()

    def stop(self):
        self.envoy.stop()
        self.idp.stop()
        self.upstream.stop()


def error_of(body):
    try:
        return json.loads(body).get("error")
    except ValueError:
        return body[:80]


def wait_status(setup, token, want, timeout):
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        got = setup.score(token)
        if got[0] == want:
            return got
        time.sleep(0.25)
    raise AssertionError(f"wanted {want} within {timeout}s, last answer {got}")


@pytest.fixture(params=h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def envoy_binary(request):
    if request.param is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    return request.param


@pytest.fixture
def started():
    made = []

    def start(binary, **kwargs):
        setup = Setup(binary, **kwargs)
        made.append(setup)
        return setup

    yield start
    for setup in made:
        setup.stop()


def test_idp_down_at_start_fails_closed_then_recovers(envoy_binary, started):
    s = started(envoy_binary, mode="down")
    token = s.token()
    status, body = s.score(token)
    assert (status, error_of(body)) == (503, "keys_unavailable"), body
    assert s.score(None)[0] == 401
    # The provider comes back: retries back off (1 s, 2 s, 4 s…) and the keys arrive.
    s.idp.mode = "ok"
    wait_status(s, token, 200, timeout=12)
    logs = s.logs()
    assert "JWKS fetch failed (status 503)" in logs
    assert token not in logs


def test_slow_idp_past_the_timeout_answers_held_requests_promptly(envoy_binary, started):
    s = started(envoy_binary)
    wait_status(s, s.token(), 200, timeout=10)
    s.idp.jwks = s.key_set("k1", "k2")
    s.idp.mode, s.idp.delay = "slow", 6.0
    began = time.time()
    status, body = s.score(s.token("k2"))
    took = time.time() - began
    # Held for the refetch, which times out (2 s): answered then, with the keys at hand.
    assert (status, error_of(body)) == (401, "unknown_key"), body
    assert 1.5 <= took < 6, took
    assert s.score(s.token())[0] == 200, "the last good keys still verify"
    # Envoy answers a timed-out callout with its own 504.
    assert re.search(r"JWKS fetch failed \((status 504|no answer)", s.logs())


def test_bad_key_set_answers_keep_the_last_good_keys(envoy_binary, started):
    s = started(envoy_binary)
    token = s.token()
    wait_status(s, token, 200, timeout=10)
    for mode in ("html", "empty", "huge", "unsupported"):
        s.idp.mode = mode
        before = len(s.logs())
        deadline = time.time() + 15
        new = ""
        while "JWKS fetch failed" not in new and time.time() < deadline:
            new = s.logs()[before:]
        assert "JWKS fetch failed" in new, (mode, new[-2000:])
        status, body = s.score(s.token(sub=f"after-{mode}"))
        assert status == 200, (mode, body)
        new = s.logs()[before:]
        # One bounded line per fetch per VM, however many keys the set holds (defect 9:
        # 175k lines per fetch).
        lines = [line for line in new.splitlines() if "claimgate" in line and "audit" not in line]
        assert len(lines) <= 6, (mode, lines[:10])
        assert all(len(line) < 2_000 for line in lines), mode
        assert len(new) < 30_000, (mode, len(new))
    logs = s.logs()
    assert "more than the 524288 accepted" in logs, "the 5 MiB body is refused by size"
    assert "key set has no usable key" in logs


def test_keys_rotated_under_traffic(envoy_binary, started):
    s = started(envoy_binary)
    k1 = s.token()
    wait_status(s, k1, 200, timeout=10)
    seen = []
    stop = threading.Event()

    def traffic():
        n = 0
        while not stop.is_set():
            n += 1
            status, _ = s.score(s.token(sub=f"t{n % 5}") if n % 7 == 0 else k1)
            seen.append((time.time(), status))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(1)
        # The provider adds k2 and starts signing with it: its first token triggers a refetch.
        s.idp.jwks = s.key_set("k1", "k2")
        assert s.score(s.token("k2"))[0] == 200
        time.sleep(1)
        # Then withdraws k1: at the next refresh (10 s) k1 tokens stop verifying.
        withdrawn_at = time.time()
        s.idp.jwks = s.key_set("k2")
        wait_status(s, k1, 401, timeout=15)
        assert s.score(s.token("k2", sub="bob"))[0] == 200
    finally:
        stop.set()
        worker.join()
    statuses = [status for _, status in seen]
    assert statuses and all(status in (200, 401) for status in statuses), sorted(set(statuses))
    assert all(status == 200 for at, status in seen if at < withdrawn_at), "no failure before k1 was withdrawn"


def test_client_hanging_up_during_a_refetch_does_not_freeze_refresh(envoy_binary, started):
    """Issue 8 defect 3. The refetch used to be dispatched from the request; when the client
    hung up, its answer was lost and `in_flight` never cleared: no refresh ever again."""
    s = started(envoy_binary)
    wait_status(s, s.token(), 200, timeout=10)
    hits = s.idp.hits
    # k2 is published, but the provider is slow: the client gives up and hangs up.
    s.idp.jwks = s.key_set("k1", "k2")
    s.idp.mode, s.idp.delay = "slow", 1.0
    k2 = s.token("k2")
    with pytest.raises((TimeoutError, urllib.error.URLError, OSError)):
        s.score(k2, timeout=0.3)
    s.idp.wait_hits(hits, timeout=5)
    s.idp.mode = "ok"
    # The refetch's answer reaches the root although its requester is gone: the new key set
    # is installed as soon as the provider answers, not reclaimed at the fetch deadline (a
    # request that dispatches itself, even with the root as effective context, loses it:
    # proxy-wasm 0.2.5 routes the answer to the context that was active at dispatch).
    deadline = time.time() + 3
    while "2 keys fetched" not in s.logs() and time.time() < deadline:
        pass
    assert "2 keys fetched" in s.logs()
    # Once the refetch interval has passed, k2 verifies: the filter fetched (or fetches) again.
    time.sleep(REFETCH_INTERVAL + 0.5)
    assert "no answer before its deadline" not in s.logs(), "the answer was lost, then reclaimed"
    status, body = s.score(k2)
    assert status == 200, body
    # And the regular refresh is alive: k1 withdrawn, gone within a refresh period.
    s.idp.jwks = s.key_set("k2")
    wait_status(s, s.token(), 401, timeout=15)


def test_non_utf8_header_bytes_do_not_trap_the_vm(envoy_binary, started):
    """Issue 8 defect 2: one obs-text byte trapped the VM (every later request: 503)."""
    s = started(envoy_binary)
    token = s.token()
    wait_status(s, token, 200, timeout=10)
    port = s.envoy.port
    head = b"GET /health HTTP/1.1\r\nhost: scoring.test\r\nuser-agent: \xa1\xff\r\nconnection: close\r\n\r\n"
    assert h.raw_request(port, head) == 200
    bad_token = b"POST /score HTTP/1.1\r\nhost: scoring.test\r\nauthorization: Bearer \xa1.\xa2.\xa3\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert h.raw_request(port, bad_token) == 401
    # The VM is alive and still enforcing.
    assert s.score(token)[0] == 200
    assert s.score(None)[0] == 401
    assert "panic" not in s.logs().lower()


# --- Defence in depth: what Envoy does after a VM trap (test-only trap build) ---


@pytest.fixture(scope="module")
def trap_wasm():
    """The filter built with the test-only `test-trap` feature, in its own target dir (never
    the release artefact)."""
    out = subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "claimgate-filter", "--target", "wasm32-wasip1",
         "--features", "test-trap", "--target-dir", str(h.TARGET / "test-trap")],
        cwd=h.ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert h.TRAP_WASM.exists()
    return h.TRAP_WASM


def trap(s):
    head = b"GET /health HTTP/1.1\r\nhost: scoring.test\r\nx-claimgate-test-trap: 1\r\nconnection: close\r\n\r\n"
    return h.raw_request(s.envoy.port, head)


def timeline(s, token, seconds=6.0):
    """(elapsed s, status with a valid token, status without one), every ~0.1 s."""
    began = time.time()
    seen = []
    while time.time() - began < seconds:
        seen.append((round(time.time() - began, 1), s.score(token)[0], s.score(None)[0]))
        time.sleep(0.1)
    return seen


def transitions(seen):
    """The timeline squeezed to its changes."""
    out = []
    for at, with_token, without in seen:
        if not out or out[-1][1:] != (with_token, without):
            out.append((at, with_token, without))
    return out


@pytest.mark.parametrize("policy", ["FAIL_RELOAD", "FAIL_CLOSED", "FAIL_OPEN"])
def test_after_a_vm_trap(envoy_binary, started, trap_wasm, policy):
    """Issue 8, defence in depth: what Envoy's wasm `failure_policy` (Istio `failStrategy`)
    does once the VM has trapped. The trap build aborts on `x-claimgate-test-trap: 1`."""
    s = started(envoy_binary, failure_policy=policy, wasm=trap_wasm)
    token = s.token()
    wait_status(s, token, 200, timeout=10)
    rounds = []
    for _ in range(2):
        trap_status = trap(s)
        rounds.append((trap_status, transitions(timeline(s, token))))
    print(f"\n{Path(envoy_binary).parts[-7]} {policy}: " + " | ".join(
        f"trap -> {status}, then (s, token, no token): {changes}" for status, changes in rounds))
    answers = [(t, n) for _, changes in rounds for _, t, n in changes]
    if policy == "FAIL_RELOAD":
        # Never "no authentication", never "all 503" for good: the VM is reloaded and
        # enforces again (a short 503 window while it reloads).
        assert all(n != 200 for _, n in answers), rounds
        for _, changes in rounds:
            assert changes[-1][1:] == (200, 401), rounds
            assert changes[-1][0] < 3.0, rounds
    elif policy == "FAIL_CLOSED":
        # The crashed VM stays dead on this worker until a restart or a new push: all 503.
        assert all(a == (503, 503) for a in answers), rounds
    else:
        # FAIL_OPEN: the filter is skipped: a request without a token reaches the upstream.
        assert any(n == 200 for _, n in answers), rounds
