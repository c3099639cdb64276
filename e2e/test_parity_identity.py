"""Issue 10, identity side, through real Envoy (each pinned version), compared with `explain`.

Verify a token when present (an expired token on a public path is 401; a `when_required`
rule does not look at it; a verified caller on a public path carries its identity
upstream), named-claim conditions (the value must come from that claim; `scope` split on
spaces), excluded subjects, `unauthenticated` for allow and deny, the default for unmatched
requests, and the two status tables (`statuses = "claimgate"` and `"istio"`: no token,
wrong audience, with and without `WWW-Authenticate`). For every request Envoy's status and
error code equal `claimgate explain --json`'s.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

import harness as h

NOW = int(time.time())
ISS = "https://idp.example.com"

POLICY = """
version = 1
name = "identity-e2e-{statuses}"
statuses = "{statuses}"

[issuers.idp]
issuer = "{iss}"
audiences = ["api"]
algorithms = ["ES256"]
roles = ["realm_access.roles", "groups"]
[issuers.idp.jwks]
file = "idp.jwks.json"

[[rules]]
name = "health"
paths = ["/health"]
allow = "anyone"

[[rules]]
name = "legacy"
paths = ["/legacy"]
verify_token = "when_required"
allow = "anyone"

[[rules]]
name = "admins"
paths = ["/admin"]
allow = {{ claims = {{ "realm_access.roles" = ["admin"] }} }}

[[rules]]
name = "scoped"
paths = ["/scoped"]
allow = {{ claims = {{ scope = ["score"], email = ["*@corp.com"] }}, not_claims = {{ acr = ["low"] }} }}

[[rules]]
name = "not-bob"
paths = ["/b"]
allow = {{ not_subjects = ["bob"] }}

[[rules]]
name = "signup"
paths = ["/signup"]
allow = "unauthenticated"

[[rules]]
name = "data"
paths = ["/data"]
allow = "anyone"

[[rules]]
name = "data-needs-token"
paths = ["/data"]
deny = "unauthenticated"

[[rules]]
name = "private"
paths = ["/private"]
allow = "authenticated"
"""


@pytest.fixture(scope="module", params=h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def gate(request):
    binary = request.param
    if binary is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    for needed in (h.CLAIMGATE, h.TESTKIT, h.WASM):
        assert Path(needed).exists(), f"{needed} missing: run scripts/setup"
    work = Path(h.scratch())
    keys = h.Keys(work)
    (work / "idp.jwks.json").write_text(json.dumps(keys.make("ES256", "idp-1")))
    upstream = h.Upstream()
    gates = {}
    for statuses in ("claimgate", "istio"):
        policy = work / f"policy-{statuses}.toml"
        policy.write_text(POLICY.format(statuses=statuses, iss=ISS))
        config = h.envoy_config(h.compile_policy(policy), h.free_port(), h.free_port(), upstream.port, h.free_port())
        run = work / f"envoy-{statuses}"
        run.mkdir()
        envoy = h.Envoy(binary, config, run, concurrency=1)
        envoy.wait_ready()
        gates[statuses] = (envoy, policy)
    yield {"gates": gates, "keys": keys}
    for envoy, _ in gates.values():
        envoy.stop()
    upstream.stop()


def mint(g, **extra):
    claims = {"iss": ISS, "sub": "alice", "aud": "api", "iat": NOW - 10, "exp": NOW + 600, **extra}
    claims = {k: v for k, v in claims.items() if v is not None}
    return g["keys"].mint("ES256", "idp-1", claims)


def check(g, path, token, status, code=None, statuses="claimgate", challenge=None):
    """Envoy answers `status` (error `code`; `WWW-Authenticate` present iff `challenge` when
    given) and `explain` says the same. Returns the upstream's view of the request headers."""
    envoy, policy = g["gates"][statuses]
    got, headers, body = envoy.request(path, token=token)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    assert got == status, f"{statuses} {path}: Envoy {got} {answer}"
    if code is not None:
        assert answer.get("error") == code, f"{statuses} {path}: {answer}"
    if challenge is not None:
        assert ("www-authenticate" in headers) == challenge, f"{statuses} {path}: {headers}"
    args = [h.CLAIMGATE, "explain", "--policy", str(policy), "--json", "--path", path, "--now", str(int(time.time()))]
    if token is not None:
        args += ["--header", f"authorization=Bearer {token}"]
    explained = json.loads(subprocess.run(args, capture_output=True, text=True, check=False).stdout)
    assert (explained["status"], explained["code"]) == (status, code), f"{statuses} {path}: explain {explained['status']} {explained['code']}"
    if challenge is not None:
        assert (explained["www_authenticate"] is not None) == challenge
    return answer.get("headers", {})


def test_verify_when_present(gate):
    g = gate
    expired = mint(g, iat=NOW - 7200, exp=NOW - 3600)
    for statuses in ("claimgate", "istio"):
        check(g, "/health", None, 200, statuses=statuses)
        check(g, "/health", expired, 401, "expired", statuses=statuses, challenge=True)
        check(g, "/health", "garbage", 401, "malformed_token", statuses=statuses)
        check(g, "/legacy", expired, 200, statuses=statuses)
    seen = check(g, "/health", mint(g), 200)
    assert seen.get("x-claimgate-subject") == "alice", seen
    seen = check(g, "/health", None, 200)
    assert "x-claimgate-subject" not in seen, seen


def test_named_claims(gate):
    g = gate
    check(g, "/admin", mint(g, groups=["admin"]), 403, "claim_not_allowed")
    check(g, "/admin", mint(g, realm_access={"roles": ["admin"]}), 200)
    check(g, "/admin", None, 401, "no_token")
    good = {"scope": "read score", "email": "bob@corp.com"}
    check(g, "/scoped", mint(g, **good), 200)
    check(g, "/scoped", mint(g, **{**good, "email": "bob@corp.com.evil"}), 403, "claim_not_allowed")
    check(g, "/scoped", mint(g, **{**good, "scope": "read"}), 403, "claim_not_allowed")
    check(g, "/scoped", mint(g, **{**good, "acr": "low"}), 403, "claim_not_allowed")
    check(g, "/scoped", mint(g, **{**good, "email": 5}), 403, "claim_not_allowed")


def test_excluded_principals_and_unauthenticated(gate):
    g = gate
    check(g, "/b", mint(g), 200)
    check(g, "/b", mint(g, sub="bob"), 403, "subject_not_allowed")
    for statuses, no_token in (("claimgate", 401), ("istio", 403)):
        check(g, "/signup", None, 200, statuses=statuses)
        check(g, "/signup", mint(g), 403, "token_present", statuses=statuses)
        check(g, "/data", None, no_token, "no_token", statuses=statuses, challenge=statuses == "claimgate")
        check(g, "/data", mint(g), 200, statuses=statuses)


def test_statuses_and_default(gate):
    g = gate
    other_audience = mint(g, aud="other")
    check(g, "/private", None, 401, "no_token", challenge=True)
    check(g, "/private", None, 403, "no_token", statuses="istio", challenge=False)
    check(g, "/private", other_audience, 401, "wrong_audience")
    check(g, "/private", other_audience, 403, "wrong_audience", statuses="istio")
    check(g, "/private", mint(g), 200, statuses="istio")
    for statuses in ("claimgate", "istio"):
        check(g, "/unmatched", mint(g), 403, "no_rule", statuses=statuses)
