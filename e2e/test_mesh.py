"""claimgate deployed the way Istio deploys it, against a real OpenID Provider.

The policy is turned into manifests by `claimgate manifest`; the manifests are validated
against Istio's CRD schemas; istio-agent's part (fetch the module from the WasmPlugin's URL,
check its SHA-256) and istiod's part (WasmPlugin → ECDS TypedExtensionConfig, phase
placement, ServiceEntry → outbound cluster) are done by e2e/mesh.py; Envoy receives the
filter over ECDS from a watched file. Tokens come from oidc-provider's token endpoint
(Keycloak-shaped and Entra-shaped instances), and the filter fetches their real JWKS.

Every test runs against each installed Envoy version.
"""

import base64
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

import harness as h
import idp
import mesh
from localmesh import WORKLOAD, LocalMesh
AML = "fraud.westeurope.inference.ml.azure.com"

POLICY = """
version = 1
name = "{name}"

[issuers.keycloak]
issuer          = "{kc_issuer}"
audiences       = ["{kc_audience}"]
audience_claims = ["aud", "azp"]
algorithms      = ["RS256"]
roles           = ["realm_access.roles", "resource_access.{kc_audience}.roles"]
scopes          = ["scope"]
client_claims   = ["azp"]
[issuers.keycloak.jwks]
uri     = "{kc_jwks}"
refresh = "10s"

[issuers.entra]
issuer        = "{entra_issuer}"
audiences     = ["{entra_audience}"]
algorithms    = ["RS256"]
roles         = ["roles", "groups"]
scopes        = ["scp"]
subject_claim = "oid"
client_claims = ["azp"]
[issuers.entra.jwks]
uri     = "{entra_jwks}"
refresh = "10m"

[[rules]]
name    = "fraud-score"
hosts   = ["{aml}"]
methods = ["POST"]
paths   = ["/score"]
allow   = {{ issuers = ["keycloak", "entra"], roles_any = ["ml-scorer", "Scoring.Invoke"] }}

[[rules]]
name  = "per-model"
paths = ["/v2/models/{{model}}/infer"]
allow = {{ issuers = ["keycloak"], roles_any = ["model.{{model}}.invoke"] }}

[[rules]]
name  = "analysts"
paths = ["/v2/models/{{model}}/explain"]
allow = {{ issuers = ["entra"], roles_any = ["{analyst_group}"], scopes_any = ["Score.Invoke"] }}
{extra_rules}
[revoked.subjects]
keycloak = [{revoked}]
"""


def policy_text(kc, entra, name="mesh", revoked=(), extra_rules=""):
    return POLICY.format(
        name=name,
        kc_issuer=kc.issuer,
        kc_jwks=kc.jwks_uri,
        kc_audience=idp.KEYCLOAK_AUDIENCE,
        entra_issuer=entra.issuer,
        entra_jwks=entra.jwks_uri,
        entra_audience=idp.ENTRA_AUDIENCE,
        analyst_group=idp.entra_tenant()["users"][0]["groups"][0],
        aml=AML,
        revoked=", ".join(json.dumps(s) for s in revoked),
        extra_rules=extra_rules,
    )


@pytest.fixture(scope="module", params=h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def sidecar(request):
    if request.param is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    for needed in (h.CLAIMGATE, h.WASM, idp.IDP_DIR / "node_modules" / "oidc-provider"):
        assert Path(needed).exists(), f"{needed} missing: run scripts/setup"
    m = LocalMesh(request.param, h.scratch(), policy_text)
    yield m
    m.stop()


def wait_for_status(envoy, expected, timeout=15, **request):
    last = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        last = envoy.request(**request)
        if last[0] == expected:
            return last
        time.sleep(0.25)
    return last


# --- manifests -------------------------------------------------------------------------


def test_manifests_validate_against_istio_crds(sidecar):
    kinds = sorted(d["kind"] for d in sidecar.docs)
    assert kinds == ["ServiceEntry", "ServiceEntry", "WasmPlugin"]
    spec = sidecar.plugin["spec"]
    assert spec["failStrategy"] == "FAIL_RELOAD" and spec["phase"] == "AUTHN"
    assert spec["sha256"] == hashlib.sha256(h.WASM.read_bytes()).hexdigest()
    compiled = json.loads(h.compile_policy(sidecar.workdir / f"policy-v{sidecar.version}.toml"))
    assert spec["pluginConfig"] == compiled, "the WasmPlugin carries exactly what `compile` prints"


def test_validation_catches_what_the_api_server_would_refuse(sidecar):
    plugin = json.loads(json.dumps(sidecar.plugin))
    plugin["spec"]["failStrategy"] = "FAIL_SHUT"
    plugin["spec"]["sha256"] = "not-hex"
    plugin["spec"]["phse"] = "AUTHN"
    plugin["spec"]["targetRefs"] = [{"kind": "Service", "name": "x"}]
    problems = " ".join(mesh.validate(plugin))
    for expected in ("FAIL_SHUT", "not-hex", "phse", "only one of targetRefs or selector"):
        assert expected in problems, problems


def test_istio_agent_refuses_a_module_with_another_checksum(sidecar, tmp_path):
    plugin = json.loads(json.dumps(sidecar.plugin))
    plugin["spec"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="checksum mismatch"):
        mesh.IstioAgent(tmp_path).fetch(plugin)


def test_plugin_selection_follows_selector_namespace_and_mode(sidecar):
    plugin = sidecar.plugin
    assert mesh.applies_to(plugin, WORKLOAD)
    assert not mesh.applies_to(plugin, dict(WORKLOAD, labels={"app": "other"}))
    assert not mesh.applies_to(plugin, dict(WORKLOAD, namespace="default"))
    assert not mesh.applies_to(plugin, dict(WORKLOAD, port=9090))
    outbound_only = json.loads(json.dumps(plugin))
    outbound_only["spec"]["match"] = [{"mode": "CLIENT"}]
    assert not mesh.applies_to(outbound_only, WORKLOAD)


# --- tokens from the real provider ------------------------------------------------------


def test_keycloak_service_account_is_allowed_with_identity_upstream(sidecar):
    token = sidecar.keycloak_service()
    claims = idp.claims_of(token)
    assert claims["realm_access"]["roles"] == ["ml-scorer"] and claims["azp"] == "fraud-pipeline"
    status, _, body = sidecar.envoy.request("/score", method="POST", host=AML, token=token)
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen["x-claimgate-subject"] == "fraud-pipeline"
    assert seen["x-claimgate-issuer"] == "keycloak"
    assert seen["x-claimgate-rule"] == "fraud-score"


def test_keycloak_service_account_without_the_role_is_forbidden(sidecar):
    status, headers, body = sidecar.envoy.request("/score", method="POST", host=AML, token=sidecar.keycloak_service("reporting"))
    assert status == 403, body
    assert json.loads(body)["error"] == "missing_role"


def test_keycloak_user_from_the_login_flow_gets_only_her_model(sidecar):
    alice = sidecar.kc.user_token("notebook", "notebook-secret", "alice", "alice-password", "score")
    assert idp.claims_of(alice)["preferred_username"] == "alice"
    assert sidecar.envoy.request("/v2/models/fraud/infer", method="POST", token=alice)[0] == 200
    status, _, body = sidecar.envoy.request("/v2/models/churn/infer", method="POST", token=alice)
    assert status == 403 and json.loads(body)["error"] == "missing_role"
    bob = sidecar.kc.user_token("notebook", "notebook-secret", "bob", "bob-password", "score")
    assert sidecar.envoy.request("/v2/models/fraud/infer", method="POST", token=bob)[0] == 403


def test_entra_daemon_app_role_and_user_group_with_scope(sidecar):
    entra = sidecar.entra
    daemon = entra.client_token("3f1d9a52-0000-4000-8000-000000000d43", "daemon-secret", "Score.Invoke")
    status, _, body = sidecar.envoy.request("/score", method="POST", host=AML, token=daemon)
    assert status == 200, body
    assert json.loads(body)["headers"]["x-claimgate-subject"] == "a7c2e1f0-0000-4000-8000-00000000da01"
    carol = entra.user_token("9c8b7a65-0000-4000-8000-0000000000b1", "spa-secret", "carol@contoso.example", "carol-password", "Score.Invoke")
    assert idp.claims_of(carol)["scp"] == "Score.Invoke"
    assert sidecar.envoy.request("/v2/models/fraud/explain", method="POST", token=carol)[0] == 200
    # The daemon has the app role but neither the group nor a delegated scope.
    assert sidecar.envoy.request("/v2/models/fraud/explain", method="POST", token=daemon)[0] == 403


def test_a_token_for_another_api_is_refused(sidecar):
    # Keycloak's token is valid, but for the Keycloak audience; the Entra-only rule refuses it.
    status, headers, body = sidecar.envoy.request("/v2/models/fraud/explain", method="POST", token=sidecar.keycloak_service())
    assert status == 403, body


def test_key_rotation_at_the_provider(sidecar):
    envoy, kc = sidecar.envoy, sidecar.kc
    before = sidecar.keycloak_service()
    assert envoy.request("/score", method="POST", host=AML, token=before)[0] == 200
    kids = kc.rotate()
    after = sidecar.keycloak_service()
    assert idp.header_of(after)["kid"] == kids[0] != idp.header_of(before)["kid"]
    # New kid → the filter refetches the provider's JWKS and verifies.
    status, _, body = envoy.request("/score", method="POST", host=AML, token=after)
    assert status == 200, body
    assert envoy.request("/score", method="POST", host=AML, token=before)[0] == 200, "old key still published"
    kc.retire()
    # After the next refresh (10 s) the retired key is gone and so are tokens it signed.
    status, headers, body = wait_for_status(envoy, 401, timeout=25, path="/score", method="POST", host=AML, token=before)
    assert status == 401, body
    assert json.loads(body)["error"] == "unknown_key"
    assert envoy.request("/score", method="POST", host=AML, token=after)[0] == 200


# --- live policy push under load ---------------------------------------------------------

REPORTS_RULE = """
[[rules]]
name  = "reports"
paths = ["/v1/reports/*"]
allow = { issuers = ["keycloak"], roles_any = ["reports-reader"] }
"""


class Load:
    """Threads sending requests over kept-alive connections, recording every answer."""

    def __init__(self, port, calls, threads=4):
        self.port, self.calls = port, calls
        self.results = []  # (thread, time, call name, status, error code)
        self.failures = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index):
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n = 0
        while not self.stopping.is_set():
            name, path, host, token = self.calls[n % len(self.calls)]
            n += 1
            try:
                conn.request("POST", path, body=b"{}", headers={"host": host, "authorization": f"Bearer {token}", "content-type": "application/json"})
                response = conn.getresponse()
                body = response.read()
                code = json.loads(body).get("error") if response.status >= 400 else None
                self.results.append((index, time.time(), name, response.status, code))
            except Exception as e:  # a dropped or reset request is a failure of the push
                self.failures.append((index, time.time(), name, repr(e)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(15)


def test_live_policy_push_under_load(sidecar):
    """Revoke a subject and add a rule while requests flow: every request is answered by
    either the old or the new policy, never dropped, and the new one rules within seconds."""
    kc = sidecar.kc
    pipeline = sidecar.keycloak_service("fraud-pipeline")
    reporting = sidecar.keycloak_service("reporting")
    calls = [("pipeline", "/score", AML, pipeline), ("reporting", "/v1/reports/daily", "reports.ml.internal", reporting)]
    old = {"pipeline": (200, None), "reporting": (403, "no_rule")}
    new = {"pipeline": (401, "revoked"), "reporting": (200, None)}
    v1 = policy_text(kc, sidecar.entra)
    v2 = policy_text(kc, sidecar.entra, revoked=["fraud-pipeline"], extra_rules=REPORTS_RULE)
    stats_before = sidecar.envoy.stats()
    with Load(sidecar.envoy.port, calls) as load:
        time.sleep(2)
        pushed_at = time.time()
        sidecar.push(v2)
        time.sleep(6)
    assert not load.failures, load.failures[:5]
    results = load.results
    assert len(results) > 200, f"only {len(results)} requests under load"
    before = [r for r in results if r[1] < pushed_at]
    assert before and all((r[3], r[4]) == old[r[2]] for r in before), "the old policy answered before the push"
    for r in results:
        assert (r[3], r[4]) in (old[r[2]], new[r[2]]), f"an answer from neither policy: {r}"
    # Per connection, once the new policy answered, the old one never answers again.
    switch = {}
    for index, at, name, status, code in results:
        if (status, code) == new[name]:
            switch.setdefault(index, at)
        elif index in switch:
            raise AssertionError(f"thread {index} saw the old policy after the new one")
    assert len(switch) == len(load.threads), "every connection saw the new policy"
    took = max(switch.values()) - pushed_at
    print(f"\nlive push: {len(results)} requests, 0 failed; new policy on every connection {took:.2f}s after the push")
    assert took < 5, f"the new policy took {took:.1f}s"
    stats = sidecar.envoy.stats()
    version_gauge = [k for k in stats if k.endswith("claimgate.policy_version")]
    assert version_gauge and stats[version_gauge[0]] != stats_before.get(version_gauge[0]), "policy version gauge moved"
    # And back: the push that restores access is just as live.
    sidecar.push(v1)
    assert wait_for_status(sidecar.envoy, 200, timeout=10, path="/score", method="POST", host=AML, token=pipeline)[0] == 200


def test_an_invalid_policy_pushed_under_load_leaves_the_old_one_in_force(sidecar):
    """Issue 8 (faults): a pluginConfig the filter refuses (a blob whose digest does not match,
    as a corrupted or hand-edited push would carry) arrives over ECDS while requests flow. Every
    request is still answered by the policy in force, none fails, and the refusal is visible in
    Envoy's log and its ECDS stats."""
    pipeline = sidecar.keycloak_service("fraud-pipeline")
    calls = [("pipeline", "/score", AML, pipeline)]
    broken = json.loads(json.dumps(sidecar.plugin))
    config = broken["spec"]["pluginConfig"]
    blob = bytearray(base64.b64decode(config["policy"]))
    blob[-1] ^= 0x01  # one flipped bit in the payload: the blob's SHA-256 no longer matches
    config["policy"] = base64.b64encode(bytes(blob)).decode()
    module = sidecar.agent.fetch(sidecar.plugin)
    fails_before = sum(int(v) for k, v in sidecar.envoy.stats().items() if k.endswith(".config_fail"))
    with Load(sidecar.envoy.port, calls) as load:
        time.sleep(1.5)
        sidecar.version += 1
        mesh.write_ecds(sidecar.ecds, [mesh.extension_config(broken, module)], sidecar.version)
        time.sleep(4)
    assert not load.failures, load.failures[:5]
    assert len(load.results) > 100, f"only {len(load.results)} requests under load"
    answers = {(r[3], r[4]) for r in load.results}
    assert answers == {(200, None)}, f"the policy in force must keep answering: {answers}"
    logs = sidecar.envoy.logs()
    assert "pluginConfig refused" in logs, "the refusal is logged"
    stats = sidecar.envoy.stats()
    fails = sum(int(v) for k, v in stats.items() if k.endswith(".config_fail"))
    assert fails > fails_before, "Envoy counts the rejected ECDS update"
    # The next valid push is live again.
    sidecar.push(policy_text(sidecar.kc, sidecar.entra, revoked=["fraud-pipeline"]))
    assert wait_for_status(sidecar.envoy, 401, timeout=10, path="/score", method="POST", host=AML, token=pipeline)[0] == 401
    sidecar.push(policy_text(sidecar.kc, sidecar.entra))
    assert wait_for_status(sidecar.envoy, 200, timeout=10, path="/score", method="POST", host=AML, token=pipeline)[0] == 200


def test_a_push_while_the_idp_is_unreachable_keeps_the_last_good_keys(sidecar):
    """Attacker pass 2 (F2): every push starts a new root; it used to start with no fetched
    keys, so a push (a revocation!) during an IdP outage turned every authenticated request
    into 503. The new root now starts from the keys earlier roots fetched (VM shared data).
    The pushed policy reaches Keycloak's key set through a cluster that does not exist: every
    fetch of the new root fails, as with an IdP that is down."""
    pipeline = sidecar.keycloak_service("fraud-pipeline")
    assert wait_for_status(sidecar.envoy, 200, timeout=10, path="/score", method="POST", host=AML, token=pipeline)[0] == 200
    unreachable = policy_text(sidecar.kc, sidecar.entra).replace(
        f'uri     = "{sidecar.kc.jwks_uri}"', f'uri     = "{sidecar.kc.jwks_uri}"\ncluster = "outbound|1||idp-unreachable.invalid"'
    )
    assert "idp-unreachable" in unreachable
    gauge_before = {k: v for k, v in sidecar.envoy.stats().items() if k.endswith("claimgate.policy_version")}
    sidecar.push(unreachable)
    time.sleep(2)  # the push is live on every connection well within this (see the live push test)
    stats = sidecar.envoy.stats()
    assert {k: v for k, v in stats.items() if k.endswith("claimgate.policy_version")} != gauge_before, "the push is in force"
    statuses = [sidecar.envoy.request("/score", method="POST", host=AML, token=pipeline, headers={"azureml-model-deployment": "blue"})[0] for _ in range(20)]
    sidecar.push(policy_text(sidecar.kc, sidecar.entra))
    assert statuses == [200] * 20, statuses
