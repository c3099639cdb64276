"""The local demo: one sidecar's worth of Istio built from claimgate's manifests (real Envoy,
the filter delivered over ECDS), two real OpenID Providers (oidc-provider shaped like a
Keycloak realm and an Entra ID tenant), and a scoring server. Runs a short scripted session of
allowed and denied calls with their reasons, revokes a caller live, then tears down
(`--keep` leaves everything running for manual curl).

Policy: examples/local-demo.toml. Ports: Keycloak-shaped IdP 8180, Entra-shaped IdP 8181,
Envoy 10000, Envoy admin 9901.
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402
from localmesh import LocalMesh  # noqa: E402

POLICY = h.ROOT / "examples" / "local-demo.toml"
PORTS = (8180, 8181, 10000, 9901)
AML = "fraud.westeurope.inference.ml.azure.com"
BLUE = {"azureml-model-deployment": "blue"}
ENTRA_DAEMON = ("3f1d9a52-0000-4000-8000-000000000d43", "daemon-secret")
ENTRA_SPA = ("9c8b7a65-0000-4000-8000-0000000000b1", "spa-secret")


def port_busy(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def show(envoy, title, path, token=None, headers=None, host="models.local", method="POST"):
    status, _, body = envoy.request(path, method=method, headers=headers or {}, token=token, host=host)
    if status == 200:
        seen = json.loads(body)["headers"]
        who = seen.get("x-claimgate-subject", "anonymous")
        rule = seen.get("x-claimgate-rule", "-")
        print(f"  {status} ALLOW  {title:<50} {method} {path}  subject={who} rule={rule}")
    else:
        print(f"  {status} DENY   {title:<50} {method} {path}  reason={json.loads(body)['error']}")
    return status


def main():
    keep = "--keep" in sys.argv
    busy = [p for p in PORTS if port_busy(p)]
    if busy:
        sys.exit(f"demo: ports {busy} are in use (the demo listens on {PORTS}); stop what holds them and retry")
    binaries = h.envoy_binaries()
    if not binaries:
        sys.exit("demo: no pinned Envoy found; run scripts/setup")
    work = Path(h.scratch())
    print("claimgate demo: starting two OpenID Providers, the scoring server and Envoy …")
    m = LocalMesh(binaries[-1], work, lambda kc, entra: POLICY.read_text(), ports=PORTS)
    try:
        envoy = m.envoy
        print(f"  Envoy {Path(binaries[-1]).parts[-7]} on 127.0.0.1:{envoy.port}; WasmPlugin {m.plugin['metadata']['name']} (policy {m.plugin['spec']['pluginConfig']['digest'][:19]}…) over ECDS")
        print(f"  Keycloak-shaped IdP: {m.kc.issuer}\n  Entra-shaped IdP:    {m.entra.issuer}\n")

        pipeline = m.kc.client_token("fraud-pipeline", "fraud-pipeline-secret", "score")
        reporting = m.kc.client_token("reporting", "reporting-secret", "score")
        alice = m.kc.user_token("notebook", "notebook-secret", "alice", "alice-password", "score")
        daemon = m.entra.client_token(*ENTRA_DAEMON, "Score.Invoke")
        carol = m.entra.user_token(*ENTRA_SPA, "carol@contoso.example", "carol-password", "Score.Invoke")

        print("Calls (tokens from the providers' token endpoints; keys from their JWKS):")
        show(envoy, "health probe, no token", "/v2/health/ready", method="GET")
        show(envoy, "Keycloak service account (ml-scorer) → blue", "/score", pipeline, BLUE, AML)
        show(envoy, "Entra daemon app (Scoring.Invoke) → blue", "/score", daemon, BLUE, AML)
        show(envoy, "no token", "/score", None, BLUE, AML)
        show(envoy, "garbled token", "/score", "not.a.jwt", BLUE, AML)
        show(envoy, "Keycloak reporting account (no ml-scorer)", "/score", reporting, BLUE, AML)
        show(envoy, "alice (login flow), her model", "/v2/models/fraud/infer", alice)
        show(envoy, "alice, a model she may not invoke", "/v2/models/churn/infer", alice)
        show(envoy, "carol (Entra analysts group + scope)", "/v2/models/fraud/explain", carol)
        show(envoy, "daemon app on explain (no group, no scope)", "/v2/models/fraud/explain", daemon)

        explained = subprocess.run(
            [h.CLAIMGATE, "explain", "--policy", POLICY, "--token", reporting, "--method", "POST", "--path", "/score", "--host", AML,
             "--header", "azureml-model-deployment=blue", "--jwks", f"keycloak={save_jwks(m.kc, work)}"],
            capture_output=True, text=True,
        )
        print("\n`claimgate explain` for the reporting account gives the filter's answer:")
        print("  " + "\n  ".join(explained.stdout.strip().splitlines()[-4:]))

        print("\nLive revocation: push the policy with fraud-pipeline revoked (compile → WasmPlugin → ECDS) …")
        revoked = POLICY.read_text().replace("keycloak = []", 'keycloak = ["fraud-pipeline"]')
        pushed = time.time()
        m.push(revoked)
        while show_quiet(envoy, pipeline) == 200 and time.time() - pushed < 10:
            time.sleep(0.05)
        print(f"  in effect after {time.time() - pushed:.2f}s:")
        show(envoy, "Keycloak service account, now revoked", "/score", pipeline, BLUE, AML)
        m.push(POLICY.read_text())

        audit = [line.split("claimgate.audit ", 1)[-1] for line in envoy.logs().splitlines() if "claimgate.audit" in line]
        access = [line for line in envoy.logs().splitlines() if line.startswith("ACCESS ")]
        print(f"\n{len(audit)} audit lines (one per decision, never the token), e.g.:\n  {audit[-1] if audit else '(none)'}")
        if access:
            print(f"Envoy access log with the filter's identity:\n  {access[1] if len(access) > 1 else access[0]}")
        if keep:
            print(
                f"\nRunning. Try:\n  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id=fraud-pipeline "
                f"-d client_secret=fraud-pipeline-secret -d scope=score {m.kc.token_endpoint} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
                f"  curl -i -X POST -H \"authorization: Bearer $TOKEN\" -H 'host: {AML}' -H 'azureml-model-deployment: blue' http://127.0.0.1:{envoy.port}/score\n"
                f"Envoy log: {envoy.log_path}   (Ctrl-C to stop)"
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        m.stop()


def show_quiet(envoy, token):
    return envoy.request("/score", method="POST", headers=BLUE, token=token, host=AML)[0]


def save_jwks(provider, work):
    path = Path(work) / "keycloak.jwks.json"
    path.write_text(json.dumps(provider.get_json(provider.jwks_uri)))
    return path


if __name__ == "__main__":
    main()
