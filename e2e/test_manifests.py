"""The manifests users apply, checked without a cluster: Istio resources against Istio's CRD
schemas (../shared/istio), Kubernetes resources for the mistakes that make them deploy but not
work, the committed WasmPlugin against the compiler's output, and the kind path script by
shellcheck and its dry run."""

import functools
import json
import re
import subprocess

import pytest

import harness as h
import istio_telemetry
import mesh

ROOT = h.ROOT
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
KIND_SCRIPT = ROOT / "e2e" / "kind" / "run.sh"
KIND_POLICY = ROOT / "e2e" / "kind" / "policy.toml"
SHELLCHECK = ROOT / ".tools" / "venv" / "bin" / "shellcheck"
ISTIO_GROUPS = ("extensions.istio.io", "networking.istio.io", "security.istio.io")


@functools.lru_cache(maxsize=None)
def all_docs():
    """(file name, document) for every manifest, parsed once; tests change only copies."""
    return tuple((path.name, doc) for path in MANIFESTS for doc in mesh.load(path.read_text()))


def test_there_are_manifests_for_every_part():
    kinds = {(name, doc["kind"]) for name, doc in all_docs()}
    for expected in [
        ("claimgate-wasmplugin.yaml", "WasmPlugin"),
        ("scoring.yaml", "Deployment"),
        ("scoring.yaml", "Service"),
        ("keycloak.yaml", "Deployment"),
        ("keycloak.yaml", "ConfigMap"),
        ("wasm-server.yaml", "Deployment"),
    ]:
        assert expected in kinds


@pytest.mark.parametrize("name,doc", all_docs(), ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}")
def test_manifest_is_valid(name, doc):
    if doc["apiVersion"].split("/")[0] in istio_telemetry.GROUPS:
        assert istio_telemetry.validate(doc) == []
    elif doc["apiVersion"].split("/")[0] in ISTIO_GROUPS:
        assert mesh.validate(doc) == []
    else:
        assert kubernetes_problems(doc, [d for _, d in all_docs()]) == []


def kubernetes_problems(doc, everything):
    """What the API server accepts but leaves broken: selectors that match nothing, ports
    that lead nowhere, objects in namespaces nobody creates."""
    problems = []
    kind, meta = doc["kind"], doc["metadata"]
    namespaces = {d["metadata"]["name"] for d in everything if d["kind"] == "Namespace"}
    if kind != "Namespace" and meta.get("namespace") not in namespaces:
        problems.append(f"namespace {meta.get('namespace')} is not created by any manifest")
    if kind == "Deployment":
        spec = doc["spec"]
        labels = spec["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
            problems.append("selector does not match the pod template")
        for c in spec["template"]["spec"]["containers"]:
            if not c.get("image") or ":" not in c["image"] or c["image"].endswith(":latest"):
                problems.append(f"container {c['name']}: image must be pinned")
        volumes = {v["name"] for v in spec["template"]["spec"].get("volumes", [])}
        for c in spec["template"]["spec"]["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"volume {m['name']} is mounted but not defined")
    if kind == "Service":
        pods = [
            d
            for d in everything
            if d["kind"] == "Deployment"
            and d["metadata"]["namespace"] == meta["namespace"]
            and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in doc["spec"]["selector"].items())
        ]
        if not pods:
            problems.append("selector matches no Deployment")
        ports = {p["containerPort"] for d in pods for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in doc["spec"]["ports"]:
            if p.get("targetPort", p["port"]) not in ports:
                problems.append(f"port {p['port']} targets no container port")
    return problems


def test_committed_wasmplugin_is_what_the_compiler_emits():
    committed = (ROOT / "manifests" / "claimgate-wasmplugin.yaml").read_text()
    sha = re.search(r"^  sha256: ([0-9a-f]{64})$", committed, re.M).group(1)
    out = subprocess.run(
        [h.CLAIMGATE, "manifest", "e2e/kind/policy.toml", "--wasm-url", "http://wasm-server.claimgate-system.svc.cluster.local/claimgate.wasm", "--sha256", sha, "--namespace", "ml-serving", "--selector", "app=fraud-scoring", "--port", "8080"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == committed, "manifests/claimgate-wasmplugin.yaml is stale: regenerate it (README, 'Deploying with Istio')"


def test_the_realm_gives_what_the_kind_policy_asks_for():
    realm_doc = next(d for n, d in all_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ml-realm")
    realm = json.loads(realm_doc["data"]["ml-realm.json"])
    keycloak = next(d for n, d in all_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "keycloak")
    env = {e["name"]: e.get("value") for e in keycloak["spec"]["template"]["spec"]["containers"][0]["env"]}
    policy = KIND_POLICY.read_text()
    assert f'issuer          = "{env["KC_HOSTNAME"]}/realms/{realm["realm"]}"' in policy
    realm_roles = {r["name"] for r in realm["roles"]["realm"]}
    assert "ml-scorer" in realm_roles and '"ml-scorer"' in policy
    clients = {c["clientId"]: c for c in realm["clients"]}
    script = KIND_SCRIPT.read_text()
    for client in ("fraud-pipeline", "reporting"):
        assert f"token_for {client}" in script
        assert clients[client]["secret"] == f"{client}-secret" and clients[client]["serviceAccountsEnabled"]
        audiences = {m["config"]["included.client.audience"] for m in clients[client]["protocolMappers"]}
        assert audiences == {"azureml-scoring"} and 'audiences       = ["azureml-scoring"]' in policy
    accounts = {u["serviceAccountClientId"]: set(u["realmRoles"]) for u in realm["users"]}
    assert "ml-scorer" in accounts["fraud-pipeline"] and "ml-scorer" not in accounts["reporting"]


@pytest.mark.parametrize("policy", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.stem)
def test_every_example_emits_valid_istio_manifests(policy):
    out = subprocess.run(
        [h.CLAIMGATE, "manifest", policy, "--wasm-url", "oci://ghcr.io/example/claimgate:0.1.0", "--sha256", "ab" * 32, "--namespace", "ml-serving", "--selector", "app=scorer"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    docs = mesh.load(out.stdout)
    for doc in docs:
        assert mesh.validate(doc) == [], doc["kind"]
    compiled = json.loads(h.compile_policy(policy))
    assert docs[0]["spec"]["pluginConfig"] == compiled
    if "https://" in policy.read_text() and "uri" in policy.read_text():
        assert {"ServiceEntry", "DestinationRule"} <= {d["kind"] for d in docs}


@pytest.mark.parametrize("flag, strategy", [([], "FAIL_RELOAD"), (["--fail-strategy", "close"], "FAIL_CLOSE")])
def test_fail_strategy_is_always_fail_closed(flag, strategy):
    # FAIL_RELOAD by default (a crashed VM is replaced; fail closed meanwhile), FAIL_CLOSE for
    # Istio < 1.27; both validate against the CRD. There is no way to ask for FAIL_OPEN.
    base = [h.CLAIMGATE, "manifest", KIND_POLICY, "--wasm-url", "oci://x/y:1", "--sha256", "ab" * 32, "--namespace", "ml-serving", "--selector", "app=x"]
    out = subprocess.run(base + flag, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    plugin = mesh.load(out.stdout)[0]
    assert plugin["spec"]["failStrategy"] == strategy
    assert mesh.validate(plugin) == []
    refused = subprocess.run(base + ["--fail-strategy", "open"], capture_output=True, text=True)
    assert refused.returncode != 0 and "FAIL_OPEN" not in refused.stdout


def test_manifest_command_refuses_bad_arguments(tmp_path):
    base = [h.CLAIMGATE, "manifest", KIND_POLICY, "--wasm-url", "oci://x/y:1"]
    cases = [
        (["--sha256", "xyz"], "64 hex"),
        (["--sha256", "ab" * 32, "--name", "Bad_Name"], "not a Kubernetes name"),
        (["--sha256", "ab" * 32, "--target-ref", "Pod/x"], "is not Gateway"),
    ]
    for extra, message in cases:
        out = subprocess.run([*base, *extra], capture_output=True, text=True)
        assert out.returncode == 1 and message in out.stderr, (extra, out.stderr)
    # (an oci:// URL refuses --wasm: test_oci.py)
    out = subprocess.run([*base[:4], "https://x/m.wasm", "--wasm", str(KIND_POLICY)], capture_output=True, text=True)
    assert out.returncode == 1 and "not a WebAssembly module" in out.stderr
    out = subprocess.run([h.CLAIMGATE, "manifest", KIND_POLICY, "--wasm-url", "ftp://x", "--sha256", "ab" * 32], capture_output=True, text=True)
    assert out.returncode == 1 and "must start with" in out.stderr


def test_gateway_target_drops_the_sidecar_match():
    out = subprocess.run(
        [h.CLAIMGATE, "manifest", KIND_POLICY, "--wasm-url", "oci://x/y:1", "--sha256", "ab" * 32, "--target-ref", "Gateway/inference-gateway"],
        capture_output=True,
        text=True,
    )
    plugin = mesh.load(out.stdout)[0]
    assert plugin["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inference-gateway"}]
    assert "match" not in plugin["spec"] and "selector" not in plugin["spec"]
    assert mesh.validate(plugin) == []


def test_shell_scripts_pass_shellcheck():
    scripts = [KIND_SCRIPT, ROOT / ".ci" / "run", *sorted((ROOT / "scripts").iterdir())]
    out = subprocess.run([SHELLCHECK, *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_kind_path_dry_run_prints_every_step():
    out = subprocess.run([KIND_SCRIPT, "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    commands = [line[2:] for line in out.stderr.splitlines() if line.startswith("+ ")]
    text = "\n".join(commands)
    order = [
        "kind create cluster",
        "istioctl install",
        "kubectl apply -f manifests/keycloak.yaml",
        "kubectl apply -f manifests/scoring.yaml",
        "kubectl apply -f manifests/wasm-server.yaml",
        "kubectl cp target/wasm32-wasip1/release/claimgate_filter.wasm",
        "target/release/claimgate manifest e2e/kind/policy.toml",
        "kubectl apply -f /",
        "openid-connect/token",
        "kind delete cluster",
    ]
    positions = [text.find(step) for step in order]
    assert all(p >= 0 for p in positions), [s for s, p in zip(order, positions) if p < 0]
    assert positions == sorted(positions), "steps out of order"
    applied = re.findall(r"kubectl apply -f (manifests/\S+)", text)
    assert applied and all((ROOT / a).exists() for a in applied)
    assert "would expect 401: fraud-pipeline after revocation" in out.stdout
    assert "Bearer\\ \\<token\\>" in text and "TOKEN_FOR" not in text.replace("Bearer\\ \\<token\\>", "")


def test_kubernetes_checks_catch_broken_wiring():
    docs = [d for _, d in all_docs()]
    service = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "fraud-scoring")))
    service["spec"]["selector"] = {"app": "fraud-scorer"}
    assert "selector matches no Deployment" in kubernetes_problems(service, docs)
    deployment = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "fraud-scoring")))
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "python"
    deployment["metadata"]["namespace"] = "ml"
    problems = " ".join(kubernetes_problems(deployment, docs))
    assert "must be pinned" in problems and "namespace ml" in problems


# --- issue 11: safe defaults ------------------------------------------------------------

SHA = "ab" * 32
KEYSET_POLICY = """version = 1
name = "keyset"
[issuers.idp]
issuer     = "https://idp.example.com/realms/ml"
audiences  = ["scoring"]
algorithms = ["RS256"]
[issuers.idp.jwks]
uri = "{uri}"
[[rules]]
name  = "score"
{hosts}paths = ["/score"]
allow = "authenticated"
"""


def keyset_policy(tmp_path, uri, hosts=""):
    path = tmp_path / f"policy-{len(list(tmp_path.iterdir()))}.toml"
    path.write_text(KEYSET_POLICY.format(uri=uri, hosts=hosts))
    return path


def manifest(policy, *flags):
    return subprocess.run([h.CLAIMGATE, "manifest", policy, "--wasm-url", "oci://x/y:1", "--sha256", SHA, *flags], capture_output=True, text=True)


def warnings_of(out):
    return [line for line in out.stderr.splitlines() if line.startswith("warning: ")]


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "would apply to every workload of the mesh"),
        (["--namespace", "ml-serving"], "every workload in namespace `ml-serving`"),
        (["--namespace", "ml-serving", "--mesh-wide"], "use --namespace-wide there"),
        (["--namespace-wide"], "say --mesh-wide"),
        (["--target-ref", "Gateway/gw", "--target-ref", "Service/scorer"], "emit one manifest for each"),
        (["--namespace", "mesh-root", "--root-namespace", "mesh-root"], "root namespace `mesh-root`"),
    ],
)
def test_a_plugin_without_a_selector_is_refused_unless_asked_for(flags, message):
    out = manifest(KIND_POLICY, *flags)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("flags, namespace", [(["--mesh-wide"], "istio-system"), (["--namespace", "ml-serving", "--namespace-wide"], "ml-serving")])
def test_a_selector_less_plugin_needs_its_explicit_flag(flags, namespace):
    out = manifest(KIND_POLICY, *flags)
    assert out.returncode == 0, out.stderr
    plugin = mesh.load(out.stdout)[0]
    assert plugin["metadata"]["namespace"] == namespace
    assert "selector" not in plugin["spec"] and "targetRefs" not in plugin["spec"]
    assert mesh.validate(plugin) == []
    # The flag is a statement, and the scope it states is spelled out on stderr when it is a namespace.
    workload = dict(namespace="ml-serving", labels={"app": "anything"}, service="any", port=1234)
    assert mesh.applies_to(plugin, workload)
    assert mesh.applies_to(plugin, dict(workload, namespace="other")) == (namespace == "istio-system")


def test_in_cluster_key_sets_are_named_by_the_fqdn_istiod_uses(tmp_path):
    policy = keyset_policy(tmp_path, "http://keycloak.auth.svc:8080/realms/ml/certs")
    plugin_config = tmp_path / "plugin.json"
    plugin_config.write_text(h.compile_policy(policy))
    # The blob the filter runs carries the cluster it calls.
    summary = json.loads(subprocess.run([h.CLAIMGATE, "show", "--format", "json", plugin_config], capture_output=True, text=True, check=True).stdout)
    assert summary[0]["policy"]["issuers"][0]["jwks"]["cluster"] == "outbound|8080||keycloak.auth.svc.cluster.local"
    out = manifest(policy, "--namespace", "ml-serving", "--selector", "app=scorer", "--deny-warnings")
    assert out.returncode == 0, out.stderr
    assert [d["kind"] for d in mesh.load(out.stdout)] == ["WasmPlugin"], "istiod already has the Service's cluster"
    # Another cluster domain: the compiled default no longer names istiod's cluster.
    out = manifest(policy, "--namespace", "ml-serving", "--selector", "app=scorer", "--cluster-domain", "corp.example")
    assert out.returncode == 0, out.stderr
    assert any('cluster = "outbound|8080||keycloak.auth.svc.corp.example"' in w for w in warnings_of(out)), out.stderr


def test_a_short_key_set_host_is_refused_with_the_fix(tmp_path):
    out = manifest(keyset_policy(tmp_path, "http://keycloak:8080/realms/ml/certs"), "--namespace", "ml-serving", "--selector", "app=scorer")
    assert out.returncode == 1 and "`keycloak.ml-serving.svc`" in out.stderr and "short name" in out.stderr, out.stderr
    out = manifest(keyset_policy(tmp_path, "https://keycloak.auth/realms/ml/certs"), "--namespace", "ml-serving", "--selector", "app=scorer")
    assert out.returncode == 0 and any("write `keycloak.auth.svc`" in w for w in warnings_of(out)), out.stderr


def test_in_cluster_https_key_sets_get_tls_origination(tmp_path):
    policy = keyset_policy(tmp_path, "https://keycloak.auth.svc:8443/realms/ml/certs")
    out = manifest(policy, "--namespace", "ml-serving", "--selector", "app=scorer")
    assert out.returncode == 0, out.stderr
    docs = mesh.load(out.stdout)
    assert [d["kind"] for d in docs] == ["WasmPlugin", "DestinationRule"]
    rule = docs[1]
    assert mesh.validate(rule) == []
    assert rule["spec"]["host"] == "keycloak.auth.svc.cluster.local" and rule["spec"]["exportTo"] == ["."]
    # The filter calls outbound|8443||keycloak.auth.svc.cluster.local in plain HTTP: the
    # sidecars of the plugin's namespace, and only they, turn that into TLS.
    assert mesh.tls_origination(docs, "keycloak.auth.svc.cluster.local", 8443, "ml-serving") == {"mode": "SIMPLE", "sni": "keycloak.auth.svc"}
    assert mesh.tls_origination(docs, "keycloak.auth.svc.cluster.local", 8443, "auth") is None
    assert any("originate TLS" in w and "namespace(s) ml-serving" in w for w in warnings_of(out)), out.stderr


def test_key_set_resources_are_exported_only_where_the_plugin_runs(tmp_path):
    policy = keyset_policy(tmp_path, "https://login.example.com/keys")
    cases = [
        (["--namespace", "ml-serving", "--selector", "app=scorer"], ["."], {"ml-serving"}),
        (["--target-ref", "Gateway/ingress"], ["."], {"istio-system"}),
        (["--selector", "app=scorer"], ["*"], {"ml-serving", "ml-batch", "other", "istio-system"}),
        (["--selector", "app=scorer", "--export-to", "ml-serving", "--export-to", "ml-batch"], ["ml-serving", "ml-batch"], {"ml-serving", "ml-batch"}),
    ]
    for flags, export_to, sees in cases:
        out = manifest(policy, *flags)
        assert out.returncode == 0, out.stderr
        docs = mesh.load(out.stdout)
        egress = [d for d in docs if d["kind"] in ("ServiceEntry", "DestinationRule")]
        assert len(egress) == 2 and all(d["spec"]["exportTo"] == export_to and mesh.validate(d) == [] for d in egress), flags
        for namespace in ("ml-serving", "ml-batch", "other", "istio-system"):
            clusters = mesh.service_entry_clusters(docs, namespace)
            assert bool(clusters) == (namespace in sees), (flags, namespace)
            for cluster in clusters:
                assert cluster["name"] == "outbound|80||login.example.com" and cluster["transport_socket"]["typed_config"]["sni"] == "login.example.com"
    out = manifest(policy, "--selector", "app=x", "--export-to", "Bad_NS")
    assert out.returncode == 1 and "--export-to" in out.stderr


def test_flags_that_disagree_with_the_target_or_policy_warn(tmp_path):
    cases = [
        (KIND_POLICY, ["--target-ref", "Gateway/ingress", "--port", "8080"], "--mode and --port select sidecar traffic"),
        (KIND_POLICY, ["--target-ref", "Gateway/ingress", "--mode", "CLIENT"], "--mode and --port select sidecar traffic"),
        (KIND_POLICY, ["--selector", "app=scorer"], "matches workloads in every namespace"),
        (KIND_POLICY, ["--namespace", "ml-serving", "--selector", "app=scorer", "--mode", "CLIENT_AND_SERVER"], "decides the workload's own outbound requests"),
        (KIND_POLICY, ["--namespace", "ml-serving", "--namespace-wide"], "every workload in `ml-serving`"),
        (ROOT / "examples" / "local-demo.toml", ["--namespace", "ml-serving", "--selector", "app=scorer"], "inside a pod that is the workload itself"),
        (keyset_policy(tmp_path, "https://login.example.com/keys", 'hosts = ["scorer.ml-batch.svc.cluster.local"]\n'), ["--namespace", "ml-serving", "--selector", "app=scorer"], "names only Services of namespace(s) ml-batch"),
        (keyset_policy(tmp_path, "https://login.example.com/keys", 'hosts = ["scorer.ml-serving.svc.cluster.local"]\n'), ["--target-ref", "Gateway/ingress"], "requests through a Gateway carry the external host name"),
    ]
    for policy, flags, message in cases:
        out = manifest(policy, *flags)
        assert out.returncode == 0 and any(message in w for w in warnings_of(out)), (flags, out.stderr)
        assert mesh.load(out.stdout)[0]["kind"] == "WasmPlugin"
        denied = manifest(policy, *flags, "--deny-warnings")
        assert denied.returncode == 3 and denied.stdout == "" and "--deny-warnings" in denied.stderr, (flags, denied.stderr)
    quiet = manifest(keyset_policy(tmp_path, "https://login.example.com/keys", 'hosts = ["scorer.ml-serving.svc.cluster.local"]\n'), "--namespace", "ml-serving", "--selector", "app=scorer", "--port", "8080")
    assert quiet.returncode == 0 and warnings_of(quiet) == [], quiet.stderr


@pytest.mark.parametrize("policy", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.stem)
def test_show_reads_the_emitted_wasmplugin_back(policy):
    # What a reviewer runs on a GitOps change: the YAML `manifest` wrote, read back.
    emitted = manifest(policy, "--namespace", "ml-serving", "--selector", "app=scorer")
    assert emitted.returncode == 0, emitted.stderr
    out = subprocess.run([h.CLAIMGATE, "show", "--format", "json", "-"], input=emitted.stdout, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    [summary] = json.loads(out.stdout)
    compiled = json.loads(h.compile_policy(policy))
    assert summary["policy"]["version"] == compiled["digest"] and summary["policy"]["name"] == compiled["name"]
    plugin = summary["wasm_plugin"]
    assert plugin["name"] == f"ml-serving/claimgate-{compiled['name']}" and plugin["sha256"] == SHA and plugin["failStrategy"] == "FAIL_RELOAD"
    assert plugin["selector"] == {"matchLabels": {"app": "scorer"}}
    text = subprocess.run([h.CLAIMGATE, "show", "-"], input=emitted.stdout, capture_output=True, text=True)
    assert text.returncode == 0 and compiled["digest"] in text.stdout and f"wasmplugin   ml-serving/claimgate-{compiled['name']}" in text.stdout


def test_show_refuses_a_tampered_wasmplugin(tmp_path):
    emitted = manifest(KIND_POLICY, "--namespace", "ml-serving", "--selector", "app=scorer").stdout
    digest = re.search(r'digest: "(sha256:[0-9a-f]{64})"', emitted).group(1)
    tampered = tmp_path / "plugin.yaml"
    tampered.write_text(emitted.replace(digest, "sha256:" + "0" * 64))
    out = subprocess.run([h.CLAIMGATE, "show", tampered], capture_output=True, text=True)
    assert out.returncode == 1 and "does not match the blob's" in out.stderr and out.stdout == "", out.stderr
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"kind: WasmPlugin\nspec:\n  pluginConfig: [\x00\xff\n")
    out = subprocess.run([h.CLAIMGATE, "show", garbage], capture_output=True, text=True)
    assert out.returncode == 1 and "panicked" not in out.stderr and out.stderr.startswith("claimgate: "), out.stderr


def test_two_key_sets_never_share_a_resource_name(tmp_path):
    """One host by http and by https would need two different ServiceEntries of one name: the
    later would replace the earlier on apply and one issuer's keys would be unreachable."""
    policy = tmp_path / "two.toml"
    issuer = 'issuer = "https://{0}.example/"\naudiences = ["x"]\nalgorithms = ["RS256"]\n'
    policy.write_text(
        "version = 1\n"
        + "[issuers.a]\n" + issuer.format("a") + '[issuers.a.jwks]\nuri = "http://idp.example.com/keys"\n'
        + "[issuers.b]\n" + issuer.format("b") + '[issuers.b.jwks]\nuri = "https://idp.example.com/keys"\n'
        + '[[rules]]\nname = "r"\nallow = "authenticated"\n'
    )
    args = [h.CLAIMGATE, "manifest", policy, "--wasm-url", "https://x.example/y.wasm", "--sha256", "ab" * 32, "--namespace", "ml", "--selector", "app=s"]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 1 and "differs from one another key set needs" in out.stderr, out.stderr
    assert out.stdout == ""
