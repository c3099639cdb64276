"""The local demo: real Envoy with claimgate.wasm in front of a scoring server, keys served by a
local JWKS endpoint standing in for the identity provider. Shows allowed and denied calls with
their reasons, then tears down (`--keep` leaves everything running for manual curl).

The identity provider here is a key server plus tokens minted by claimgate-testkit, shaped like
Keycloak and Entra ID tokens. (The oidc-provider-backed IdP is tracked as open work.)
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

NOW = int(time.time())
KC = "https://keycloak.demo/realms/ml"
ENTRA = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
AML = "fraud.westeurope.inference.ml.azure.com"

POLICY = """
version = 1
name = "demo"

[issuers.keycloak]
issuer          = "{kc}"
audiences       = ["azureml-scoring"]
audience_claims = ["aud", "azp"]
algorithms      = ["RS256"]
roles           = ["realm_access.roles"]
[issuers.keycloak.jwks]
uri     = "http://127.0.0.1:{port}/realms/ml/protocol/openid-connect/certs"
cluster = "jwks"

[issuers.entra]
issuer        = "{entra}"
audiences     = ["https://ml.azure.com"]
algorithms    = ["ES256"]
roles         = ["roles", "groups"]
subject_claim = "oid"
[issuers.entra.jwks]
uri     = "http://127.0.0.1:{port}/discovery/v2.0/keys"
cluster = "jwks"

[[rules]]
name    = "fraud-blue"
hosts   = ["{aml}"]
methods = ["POST"]
paths   = ["/score"]
headers = {{ "azureml-model-deployment" = "blue" }}
allow   = {{ roles_any = ["ml-scorer"] }}

[[rules]]
name  = "kserve"
paths = ["/v2/models/{{model}}/infer"]
allow = {{ roles_any = ["model.{{model}}.invoke"] }}

[[rules]]
name  = "health"
paths = ["/v2/health/*"]
allow = "anyone"

[revoked]
subjects = ["svc-retired-pipeline"]
"""


def main():
    keep = "--keep" in sys.argv
    work = Path(h.scratch())
    keys = h.Keys(work)
    kc = keys.make("RS256", "kc-demo")
    entra = keys.make("ES256", "entra-demo")
    jwks = h.JwksServer(json.dumps({"keys": kc["keys"] + entra["keys"]}))
    upstream = h.Upstream()
    policy = work / "policy.toml"
    policy.write_text(POLICY.format(kc=KC, entra=ENTRA, aml=AML, port=jwks.port))
    plugin_config = h.compile_policy(policy)
    binaries = h.envoy_binaries()
    envoy = h.Envoy(binaries[-1], h.envoy_config(plugin_config, h.free_port(), h.free_port(), upstream.port, jwks.port), work)
    envoy.wait_ready()
    print(f"claimgate demo: Envoy {Path(binaries[-1]).parts[-7]} on 127.0.0.1:{envoy.port}, policy {policy}\n")

    def kc_token(**extra):
        claims = {"iss": KC, "sub": "alice", "azp": "azureml-scoring", "aud": "account", "iat": NOW, "exp": NOW + 600,
                  "realm_access": {"roles": ["ml-scorer", "model.fraud.invoke"]}}
        claims.update(extra)
        return keys.mint("RS256", "kc-demo", claims)

    entra_app = keys.mint("ES256", "entra-demo", {"iss": ENTRA, "oid": "3f2a-app", "aud": "https://ml.azure.com", "azp": "batch-app",
                                                  "iat": NOW, "exp": NOW + 600, "roles": ["ml-scorer"]})
    blue = {"azureml-model-deployment": "blue"}
    calls = [
        ("health probe, no token", "GET", "/v2/health/ready", None, {}),
        ("Keycloak user with ml-scorer → blue deployment", "POST", "/score", kc_token(), blue),
        ("Entra app role → blue deployment", "POST", "/score", entra_app, blue),
        ("no token", "POST", "/score", None, blue),
        ("expired token", "POST", "/score", kc_token(iat=NOW - 7200, exp=NOW - 3600), blue),
        ("token for another client", "POST", "/score", kc_token(azp="other-app"), blue),
        ("revoked service account", "POST", "/score", kc_token(sub="svc-retired-pipeline"), blue),
        ("viewer without ml-scorer", "POST", "/score", kc_token(realm_access={"roles": ["viewer"]}), blue),
        ("KServe model the caller may invoke", "POST", "/v2/models/fraud/infer", kc_token(), {}),
        ("KServe model the caller may not invoke", "POST", "/v2/models/churn/infer", kc_token(), {}),
    ]
    for title, method, path, token, headers in calls:
        host = AML if path == "/score" else "kserve.local"
        status, _, body = envoy.request(path, method=method, headers=headers, token=token, host=host)
        if status == 200:
            seen = json.loads(body)["headers"]
            who = seen.get("x-claimgate-subject", "anonymous")
            print(f"  {status} ALLOW  {title:<48} {method} {path}  (upstream saw subject={who})")
        else:
            print(f"  {status} DENY   {title:<48} {method} {path}  reason={json.loads(body)['error']}")
    audit_lines = [line for line in envoy.logs().splitlines() if "claimgate.audit" in line]
    print(f"\n{len(audit_lines)} audit lines in {envoy.log_path}, e.g.:\n  {audit_lines[-1].split('claimgate.audit ', 1)[-1]}")
    if keep:
        print(f"\nRunning. Try: curl -i http://127.0.0.1:{envoy.port}/v2/health/ready   (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    envoy.stop()
    jwks.stop()
    upstream.stop()


if __name__ == "__main__":
    main()
