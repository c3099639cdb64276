"""Operating claimgate in Istio, in real Envoy (each pinned version): what an operator sees with
Istio's defaults and with the shipped manifests (README, "Operating claimgate in Istio").

The proxy runs as Istio runs it: `--log-level warning --component-log-level misc:error`, the
stats config istio-agent renders from manifests/telemetry-meshconfig.yaml, and the access log
istiod builds from its `claimgate-access-log` provider. Then:

- audit lines: denies and would-denies appear at `warning`, allows only when the operator
  raises the `wasm` logger (live, through the admin `/logging` endpoint); never a token;
- the access log holds every decision (allow, deny with its reason, rule, subject);
- `/stats/prometheus` shows `claimgate_denied_total{reason="…"}` with exact counts, and every
  metric the Grafana dashboard queries;
- the policy version gauge is the digest's first 8 hex digits.
"""

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

import harness as h
import istio_telemetry as it
import mesh

NOW = int(time.time())
ISS = "https://keycloak.test/realms/ml"
ENTRA = "https://login.microsoftonline.com/tenant/v2.0"
DASHBOARD = h.ROOT / "manifests" / "grafana-dashboard.json"
PROVIDER = "claimgate-access-log"

POLICY = """
version = 1
name = "operations"

[issuers.keycloak]
issuer     = "{iss}"
audiences  = ["scoring"]
algorithms = ["RS256"]
roles      = ["roles"]
[issuers.keycloak.jwks]
file = "keycloak.jwks.json"

[issuers.entra]
issuer     = "{entra}"
audiences  = ["scoring"]
algorithms = ["ES256"]
[issuers.entra.jwks]
uri     = "http://127.0.0.1:{jwks_port}/keys"
cluster = "jwks"
refresh = "10m"

[[rules]]
name  = "score"
paths = ["/score"]
allow = {{ roles_any = ["ml-scorer"] }}

[[rules]]
name  = "health"
paths = ["/health"]
allow = "anyone"

[[rules]]
name  = "trial-deny-batch"
paths = ["/score"]
headers = {{ "azureml-model-deployment" = "batch" }}
audit = true
deny  = "anyone"
"""


class Proxy:
    """A sidecar-like Envoy with claimgate, Istio's log level, stats config and access log."""

    def __init__(self, binary, work, istio_defaults_only=False, policy_text=POLICY):
        self.work = Path(work)
        self.keys = h.Keys(self.work)
        (self.work / "keycloak.jwks.json").write_text(json.dumps(self.keys.make("RS256", "kc-1")))
        self.jwks = h.JwksServer(json.dumps(self.keys.make("ES256", "entra-1")))
        policy = self.work / "policy.toml"
        policy.write_text(policy_text.format(iss=ISS, entra=ENTRA, jwks_port=self.jwks.port))
        self.plugin_config = h.compile_policy(policy)
        self.upstream = h.Upstream()
        self.started = time.time()
        self.access_log = self.work / "access.log"
        mesh_config = it.overlay()
        log = it.access_log(mesh_config, PROVIDER, self.access_log)
        config = h.envoy_config(self.plugin_config, h.free_port(), h.free_port(), self.upstream.port, self.jwks.port)
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        manager["access_log"] = [log]
        config["stats_config"] = it.stats_config(mesh_config, istio_defaults_only)
        # Istio's proxy defaults: `--proxyLogLevel=warning`, `--proxyComponentLogLevel=misc:error`.
        self.envoy = h.Envoy(binary, config, self.work, log_args=("--log-level", "warning", "--component-log-level", "misc:error"))
        self.envoy.wait_ready()

    def token(self, **claims):
        base = {"iss": ISS, "sub": "alice", "aud": "scoring", "iat": NOW - 10, "exp": NOW + 600, "roles": ["ml-scorer"]}
        base.update(claims)
        return self.keys.mint("RS256", "kc-1", base)

    def admin(self, path, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.envoy.admin_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def prometheus(self):
        """`/stats/prometheus` as {family: {frozenset(labels): value}} and the TYPE lines."""
        families, types = {}, {}
        for line in self.admin("/stats/prometheus").splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$", line)
            if m:
                labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2)))
                families.setdefault(m.group(1), {})[labels] = float(m.group(3))
        return families, types

    def audit_lines(self):
        out = []
        for line in self.envoy.logs().splitlines():
            if "claimgate.audit " in line:
                level = re.search(r"\]\[(\w+)\]\[wasm\]", line)
                out.append((level.group(1) if level else None, json.loads(line.split("claimgate.audit ", 1)[1])))
        return out

    def access_entries(self):
        time.sleep(0.3)  # the file log flushes every 100 ms (--file-flush-interval-msec)
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self):
        self.envoy.stop()
        self.upstream.stop()
        self.jwks.stop()


@pytest.fixture(scope="module", params=h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def proxy(request):
    if request.param is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    for needed in (h.CLAIMGATE, h.TESTKIT, h.WASM):
        assert Path(needed).exists(), f"{needed} missing: run scripts/setup"
    p = Proxy(request.param, h.scratch())
    # The traffic every test below reads: 3 allowed, 2 without a token, 1 without the role,
    # 1 allowed that the trial (audit) rule would deny, 1 public.
    p.tokens = {"alice": p.token(), "norole": p.token(sub="bob", roles=["viewer"])}
    p.answers = [
        p.envoy.request("/score", "POST", token=p.tokens["alice"], headers={"x-request-id": f"ok-{i}"})[0] for i in range(3)
    ]
    p.answers += [p.envoy.request("/score?access_token=" + p.tokens["alice"], "POST")[0], p.envoy.request("/score", "POST")[0]]
    p.answers += [p.envoy.request("/score", "POST", token=p.tokens["norole"])[0]]
    p.answers += [p.envoy.request("/score", "POST", token=p.tokens["alice"], headers={"azureml-model-deployment": "batch"})[0]]
    p.answers += [p.envoy.request("/health")[0]]
    yield p
    p.stop()


def test_the_traffic_was_decided_as_expected(proxy):
    assert proxy.answers == [200, 200, 200, 401, 401, 403, 200, 200]


def test_denies_and_would_denies_are_logged_at_istios_default_level_allows_are_not(proxy):
    time.sleep(0.3)
    lines = proxy.audit_lines()
    summary = sorted((level, line["decision"], line["reason"] or (line["shadow"] or {}).get("rule")) for level, line in lines)
    assert summary == [
        ("warning", "allow", "trial-deny-batch"),
        ("warning", "deny", "missing_role"),
        ("warning", "deny", "no_token"),
        ("warning", "deny", "no_token"),
    ], lines
    logs = proxy.envoy.logs()
    # Which policy runs is visible at warning too.
    assert re.search(r"policy `operations` version sha256:[0-9a-f]{64} active", logs), logs[-2000:]
    for token in proxy.tokens.values():
        assert token not in logs and token.rsplit(".", 1)[1] not in logs


def test_raising_the_wasm_logger_shows_allows_from_the_next_tick(proxy):
    try:
        proxy.admin("/logging?wasm=info", method="POST")
        time.sleep(1.5)  # the filter reads the level once per tick (1 s)
        assert proxy.envoy.request("/score", "POST", token=proxy.tokens["alice"], headers={"x-request-id": "after-raise"})[0] == 200
        time.sleep(0.3)
        raised = [(level, line) for level, line in proxy.audit_lines() if line["request_id"] == "after-raise"]
        assert [(level, line["decision"]) for level, line in raised] == [("info", "allow")]
    finally:
        proxy.admin("/logging?wasm=warning", method="POST")
    time.sleep(1.5)
    assert proxy.envoy.request("/score", "POST", token=proxy.tokens["alice"], headers={"x-request-id": "after-lower"})[0] == 200
    time.sleep(0.3)
    assert not [line for _, line in proxy.audit_lines() if line["request_id"] == "after-lower"]


def test_every_decision_is_in_the_access_log(proxy):
    entries = proxy.access_entries()
    first = entries[: len(proxy.answers)]
    assert [int(e["response_code"]) for e in first] == proxy.answers
    decided = [(e["claimgate_decision"], e["claimgate_reason"], e["claimgate_rule"], e["claimgate_subject"]) for e in first]
    assert decided == [
        ("allow", None, "score", "alice"),
        ("allow", None, "score", "alice"),
        ("allow", None, "score", "alice"),
        ("deny", "no_token", "score", None),
        ("deny", "no_token", "score", None),
        ("deny", "missing_role", "score", "bob"),
        ("allow", None, "score", "alice"),
        ("allow", None, "health", None),
    ]
    assert first[0]["claimgate_issuer"] == "keycloak" and first[0]["request_id"] == "ok-0"
    # The trial (audit) rule's would-deny is in the trail too, and only on that request.
    shadows = [(e["claimgate_shadow_reason"], e["claimgate_shadow_rule"]) for e in first]
    assert shadows == [(None, None)] * 6 + [("explicit_deny", "trial-deny-batch"), (None, None)]
    # The path is logged without its query: a token sent as ?access_token= stays out.
    assert first[3]["path"] == "/score"
    text = proxy.access_log.read_text()
    for token in proxy.tokens.values():
        assert token.rsplit(".", 1)[1] not in text


@pytest.mark.parametrize("binary", h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def test_without_filter_state_the_access_log_has_no_decision_and_nothing_else_changes(binary):
    """`filter_state = "none"` (issue 9: a mesh whose access log does not read the decision
    does not pay four host calls per request for it): same answers, same counters."""
    if binary is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    policy = POLICY.replace('name = "operations"', 'name = "operations"\nfilter_state = "none"', 1)
    assert policy != POLICY
    p = Proxy(binary, h.scratch(), policy_text=policy)
    try:
        alice, bob = p.token(), p.token(sub="bob", roles=["viewer"])
        answers = [p.envoy.request("/score", "POST", token=alice)[0] for _ in range(3)]
        answers += [p.envoy.request("/score", "POST")[0], p.envoy.request("/score", "POST", token=bob)[0]]
        assert answers == [200, 200, 200, 401, 403]
        entries = p.access_entries()
        assert [int(e["response_code"]) for e in entries] == answers
        assert all(e["claimgate_decision"] is None and e["claimgate_subject"] is None for e in entries), entries
        families, _ = p.prometheus()
        allowed = sum(v for name, series in families.items() if name.endswith("claimgate_allowed_total") for v in series.values())
        assert allowed == 3, families.get("envoy_claimgate_allowed_total")
    finally:
        p.stop()


def test_prometheus_has_the_deny_reason_as_a_label(proxy):
    families, types = proxy.prometheus()
    assert types.get("claimgate_denied_total") == "counter"
    denied = {dict(labels)["reason"]: value for labels, value in families["claimgate_denied_total"].items()}
    assert denied["no_token"] == 2 and denied["missing_role"] == 1
    assert sum(denied.values()) == 3, denied
    assert not [name for name in families if "reason" in name or "denied_" in name.replace("denied_total", "")], sorted(families)
    assert families["claimgate_audit_would_deny_total"][frozenset()] == 1
    assert families["claimgate_allowed_total"][frozenset()] >= 5
    assert families["claimgate_token_cache_hit_total"][frozenset()] >= 2


def test_istio_keeps_the_stats_without_a_stats_matcher_and_only_tags_need_the_overlay(proxy):
    # Istio's default inclusion list (prefix `wasm`) keeps every claimgate stat; without
    # `extraStatTags` the reason stays in the name (what the overlay fixes).
    other = Proxy(proxy.envoy.proc.args[0], h.scratch(), istio_defaults_only=True)
    try:
        assert other.envoy.request("/score", "POST")[0] == 401
        families, _ = other.prometheus()
        assert "claimgate_denied_total" not in families
        unextracted = re.sub(r"[^a-zA-Z0-9_]", "_", "claimgate.reason=.=no_token;.;denied_total")
        assert families[unextracted][frozenset()] == 1, sorted(families)
        assert "claimgate_policy_version" in families and "claimgate_allowed_total" in families
    finally:
        other.stop()


def test_key_set_age_per_issuer(proxy):
    # The remote issuer's first fetch happened at start; the file-backed one has no gauge.
    families, types = proxy.prometheus()
    assert types["claimgate_jwks_fetch_success_timestamp_seconds"] == "gauge"
    fetched = {dict(labels)["issuer"]: value for labels, value in families["claimgate_jwks_fetch_success_timestamp_seconds"].items()}
    assert list(fetched) == ["entra"], fetched
    assert proxy.started - 2 <= fetched["entra"] <= time.time() + 1, (proxy.started, fetched)
    assert families["claimgate_jwks_fetch_success_total"][frozenset()] >= 1


def test_policy_version_gauge_is_the_digest_prefix(proxy):
    digest = json.loads(proxy.plugin_config)["digest"]
    families, types = proxy.prometheus()
    assert types["claimgate_policy_version"] == "gauge"
    assert families["claimgate_policy_version"][frozenset()] == int(digest.removeprefix("sha256:")[:8], 16)


def test_the_dashboard_queries_only_metrics_the_filter_exports(proxy):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "") for v in dashboard.get("templating", {}).get("list", [])]
    families, _ = proxy.prometheus()
    used = {name for e in exprs for name in re.findall(r"\bclaimgate_[a-z_]+\b", e)}
    assert used and used <= set(families), used - set(families)
    # Every label a query groups or filters by exists on the metric, or is one Prometheus adds
    # when it scrapes a pod (Istio's merged scrape).
    scrape = {"namespace", "pod", "instance", "job", "app"}
    for e in exprs:
        for name in re.findall(r"\bclaimgate_[a-z_]+\b", e):
            labels = {k for ls in families[name] for k, _ in ls}
            for grouped in re.findall(r"by \(([^)]*)\)", e):
                for label in (s.strip() for s in grouped.split(",")):
                    assert label in labels | scrape, (e, label)
    titles = [p["title"] for p in dashboard["panels"]]
    for topic in ("Decisions", "Denies by reason", "Audit would-deny", "JWKS", "Policy version"):
        assert any(topic.lower() in t.lower() for t in titles), (topic, titles)


@pytest.mark.parametrize("path", [it.TELEMETRY, it.MESH_CONFIG], ids=lambda p: p.name)
def test_telemetry_manifests_are_valid(path):
    for doc in it.load(path):
        assert it.validate(doc) == []


def test_telemetry_enables_the_access_log_where_the_plugin_runs():
    telemetry = it.telemetry()
    (plugin,) = mesh.load((h.ROOT / "manifests" / "claimgate-wasmplugin.yaml").read_text())
    assert telemetry["metadata"]["namespace"] == plugin["metadata"]["namespace"]
    assert telemetry["spec"]["selector"] == plugin["spec"]["selector"]
    names = {p["name"] for p in telemetry["spec"]["accessLogging"][0]["providers"]}
    assert names == {PROVIDER} and it.provider(it.overlay(), PROVIDER)
    labels = it.provider(it.overlay(), PROVIDER)["envoyFileAccessLog"]["logFormat"]["labels"]
    for field in ("decision", "reason", "rule", "subject", "issuer", "shadow_reason", "shadow_rule"):
        assert labels[f"claimgate_{field}"] == f"%FILTER_STATE(wasm.claimgate.{field}:PLAIN)%"
    assert it.overlay()["defaultConfig"]["extraStatTags"] == ["reason", "issuer"]


def test_validation_catches_broken_telemetry():
    telemetry = it.telemetry()
    telemetry["spec"]["accessLogging"][0]["providers"] = [{"nmae": PROVIDER}]
    assert it.validate(telemetry)
    (overlay,) = it.load(it.MESH_CONFIG)
    overlay["spec"]["meshConfig"]["defaultConfig"]["extraStatTag"] = ["reason"]
    assert it.validate(overlay)
    (overlay,) = it.load(it.MESH_CONFIG)
    overlay["spec"]["meshConfig"]["extensionProviders"][0]["envoyFileAccessLog"]["logFormat"]["text"] = "x"
    assert it.validate(overlay), "text and labels are one of"
