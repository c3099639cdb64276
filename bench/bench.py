"""claimgate against Envoy's native filters, side by side in one run.

Three Envoys with the same listener and a direct 200 response (no upstream to measure):
  none     no authentication (the floor)
  native   jwt_authn + rbac, configured as Istio configures them for a RequestAuthentication
           plus an AuthorizationPolicy on `request.auth.claims[realm_access][roles]`
  claimgate  the filter with the same decision as a compiled policy
Each gets the same load from wrk (one Envoy at a time, one worker thread each), for:
  one-token   every request carries the same valid token (both sides cache verifications)
  1000-tokens requests cycle through 1,000 distinct valid tokens, all cached after warm-up
  no-token    every request is denied with 401
  first-sight 1,000 requests, one connection, each with a token never seen before: the cost
              of a signature verification (RS256, 2048-bit) on each side
Prints requests/s, p50/p99 latency, the ratio claimgate/native, and each Envoy's resident
memory after its runs. Figures drift on a shared machine; the ratios measured in one run are
the comparison.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
import harness as h  # noqa: E402

ISSUER = "https://keycloak.bench/realms/ml"
AUDIENCE = "azureml-scoring"
HERE = Path(__file__).resolve().parent

POLICY = f"""
version = 1
name = "bench"
[issuers.keycloak]
issuer     = "{ISSUER}"
audiences  = ["{AUDIENCE}"]
algorithms = ["RS256"]
roles      = ["realm_access.roles"]
[issuers.keycloak.jwks]
file = "bench.jwks.json"

[[rules]]
name    = "score"
methods = ["POST"]
paths   = ["/score"]
allow   = {{ issuers = ["keycloak"], roles_any = ["ml-scorer"] }}
"""


def native_filters(jwks_text):
    return [
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    "keycloak": {
                        "issuer": ISSUER,
                        "audiences": [AUDIENCE],
                        "local_jwks": {"inline_string": jwks_text},
                        "payload_in_metadata": "payload",
                        "forward": True,
                        "jwt_cache_config": {"jwt_cache_size": 10000},
                    }
                },
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "keycloak"}}],
            },
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {
                    "action": "ALLOW",
                    "policies": {
                        "score": {
                            "permissions": [
                                {
                                    "and_rules": {
                                        "rules": [
                                            {"header": {"name": ":method", "string_match": {"exact": "POST"}}},
                                            {"url_path": {"path": {"exact": "/score"}}},
                                        ]
                                    }
                                }
                            ],
                            "principals": [
                                {
                                    "metadata": {
                                        "filter": "envoy.filters.http.jwt_authn",
                                        "path": [{"key": "payload"}, {"key": "realm_access"}, {"key": "roles"}],
                                        "value": {"list_match": {"one_of": {"string_match": {"exact": "ml-scorer"}}}},
                                    }
                                }
                            ],
                        }
                    },
                },
            },
        },
    ]


def bootstrap(filters):
    """One listener answering a direct 200 after `filters` (no upstream to measure)."""
    ok = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    return {
        "admin": h.admin(h.free_port()),
        "static_resources": {"listeners": [h.http_listener("bench", h.free_port(), filters, ok)]},
    }


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wrk(port, tokens_file, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(HERE / "tokens.lua"), f"http://127.0.0.1:{port}/score"],
        capture_output=True,
        text=True,
        env={"TOKENS_FILE": str(tokens_file), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)$", text, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    statuses = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "non2xx": int(statuses.group(1)) if statuses else 0}


def first_sight(port, tokens):
    """Milliseconds per request when every token is new (no cache can help)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    refused = 0
    started = time.perf_counter()
    for t in tokens:
        conn.request("POST", "/score", body=b"{}", headers={"host": "bench", "authorization": f"Bearer {t}"})
        response = conn.getresponse()
        response.read()
        refused += response.status != 200
    elapsed = time.perf_counter() - started
    conn.close()
    return {"ms": elapsed * 1000 / len(tokens), "refused": refused}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--envoy", default=None, help="Envoy binary (default: the newest pinned one)")
    args = parser.parse_args()
    binary = args.envoy or h.envoy_binaries()[-1]
    work = Path(tempfile.mkdtemp(prefix="claimgate-bench-"))

    keys = h.Keys(work)
    jwks = keys.make("RS256", "bench")
    (work / "bench.jwks.json").write_text(json.dumps(jwks))
    (work / "policy.toml").write_text(POLICY)
    plugin_config = h.compile_policy(work / "policy.toml")
    now = int(time.time())

    def token(sub):
        return keys.mint("RS256", "bench", {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600, "realm_access": {"roles": ["ml-scorer"]}})

    print("minting 1,000 tokens …", file=sys.stderr)
    many = [token(f"svc-{i}") for i in range(1000)]
    fresh = {setup: [token(f"{setup}-{i}") for i in range(1000)] for setup in ("none", "native", "claimgate")}
    files = {"one-token": [many[0]], "1000-tokens": many, "no-token": [""]}
    for name, lines in files.items():
        (work / f"{name}.txt").write_text("\n".join(lines) + "\n")

    setups = {"none": [], "native": native_filters(json.dumps(jwks)), "claimgate": [h.wasm_filter(plugin_config)]}
    results, memory, cold = {}, {}, {}
    for setup, filters in setups.items():
        folder = work / setup
        folder.mkdir()
        envoy = h.Envoy(binary, bootstrap(filters), folder)
        try:
            envoy.wait_ready()
            for scenario in files:
                tokens = work / f"{scenario}.txt"
                # Warm-up: JIT, connections, and every token of the scenario seen (cached).
                first_sight(envoy.port, files[scenario])
                wrk(envoy.port, tokens, 2, args.connections)
                results[(setup, scenario)] = wrk(envoy.port, tokens, args.seconds, args.connections)
            cold[setup] = first_sight(envoy.port, fresh[setup])
            memory[setup] = rss_kib(envoy.proc.pid)
        finally:
            envoy.stop()

    version = Path(binary).parts[-7] if len(Path(binary).parts) > 7 else binary
    print(f"\nclaimgate vs native jwt_authn + rbac — {version}, 1 worker, wrk -t1 -c{args.connections} -d{args.seconds}s, direct 200 response")
    print(f"{'scenario':<12} {'setup':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for scenario in files:
        for setup in setups:
            r = results[(setup, scenario)]
            print(f"{scenario:<12} {setup:<10} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['non2xx']:>8}")
        c, n = results[("claimgate", scenario)], results[("native", scenario)]
        print(f"{'':<12} {'ratio':<10} {c['rps'] / n['rps']:>9.2f} {c['p50'] / n['p50']:>8.2f} {c['p99'] / n['p99']:>8.2f}   (claimgate / native)")
    print("\nfirst-sight tokens, one connection, ms per request: " + ", ".join(f"{s} {cold[s]['ms']:.3f}" for s in setups))
    verify = {s: cold[s]["ms"] - cold["none"]["ms"] for s in ("native", "claimgate")}
    print(f"  added over no auth: native {verify['native']:.3f} ms, claimgate {verify['claimgate']:.3f} ms (below ~0.05 ms is noise)")
    print("\nresident memory after the runs (KiB): " + ", ".join(f"{s} {memory[s]}" for s in setups))
    print(f"claimgate - native: {memory['claimgate'] - memory['native']} KiB")
    expected = {"one-token": 0, "1000-tokens": 0}
    for scenario, want in expected.items():
        for setup in ("native", "claimgate"):
            if results[(setup, scenario)]["non2xx"] != want:
                sys.exit(f"{setup} {scenario}: valid tokens were refused — the comparison is void")
    for setup in ("native", "claimgate"):
        if cold[setup]["refused"]:
            sys.exit(f"{setup} first-sight: valid tokens were refused — the comparison is void")
        if results[(setup, "no-token")]["non2xx"] == 0:
            sys.exit(f"{setup}: requests without a token passed — the comparison is void")


if __name__ == "__main__":
    main()
