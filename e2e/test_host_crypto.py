"""Host crypto (issue 9): RS256/384/512 and ES256/384 signatures checked by Envoy's BoringSSL
(`verify_signature` foreign function) give exactly the answers of the pure-Rust path.

For each pinned Envoy, two Envoys run the same .wasm and policy: one with host crypto (the
default: detected at VM start), one with `vm_config.configuration` `{"host_crypto": "off"}`.
Many tokens (several keys per algorithm; valid, tampered payload, tampered signature, wrong
key, no `kid`, high-S ECDSA, a DER signature inside the JWS, non-canonical base64) go to both;
each status must equal the other Envoy's and `claimgate explain --json` (the pure-Rust path the
CLI always takes). PS256 and EdDSA ride along: the host must never be asked about them (it
answers false for valid PSS and has no Ed25519). The logs must say host crypto is on (resp. off)
and the host-on Envoy's counter must show the host decided the RS*/ES* signatures, so the test
fails if detection silently turned it off.
"""

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

import harness as h

NOW = int(time.time())
AUD = "scoring"
ALGS = ["RS256", "RS384", "RS512", "ES256", "ES384"]
PURE_ONLY = ["PS256", "EdDSA"]
KEYS_PER_ALG = 3
# ECDSA group orders (for high-S signatures: s' = n - s).
ORDER = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
}
WIDTH = {"ES256": 32, "ES384": 48}


def issuer_url(alg):
    return f"https://{alg.lower()}.idp.test"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def policy_text():
    out = ['version = 1', 'name = "host-crypto"', '']
    for alg in ALGS + PURE_ONLY:
        name = alg.lower()
        out += [
            f"[issuers.{name}]",
            f'issuer     = "{issuer_url(alg)}"',
            f'audiences  = ["{AUD}"]',
            f'algorithms = ["{alg}"]',
            f"[issuers.{name}.jwks]",
            f'file = "{name}.jwks.json"',
            "",
        ]
    out += ["[[rules]]", 'name  = "api"', 'paths = ["/api/*"]', 'allow = "authenticated"', ""]
    return "\n".join(out)


def der_integer(value):
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    if raw[0] & 0x80:
        raw = b"\x00" + raw
    return b"\x02" + bytes([len(raw)]) + raw


def raw_to_der(raw, width):
    r, s = int.from_bytes(raw[:width], "big"), int.from_bytes(raw[width:], "big")
    body = der_integer(r) + der_integer(s)
    return b"\x30" + bytes([len(body)]) + body


def with_signature(token, signature):
    head, body, _ = token.split(".")
    return f"{head}.{body}.{b64(signature)}"


def flip_signature_bit(token):
    head, body, sig = token.split(".")
    raw = bytearray(unb64(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def tamper_payload(token):
    head, body, sig = token.split(".")
    claims = json.loads(unb64(body))
    claims["sub"] = claims["sub"] + "-x"
    return f"{head}.{b64(json.dumps(claims).encode())}.{sig}"


def non_canonical(token):
    """The last base64 character with one of its unused low bits set: the same bytes to a lax
    decoder, a different (refused) token to a strict one. `None` when no bit is unused."""
    head, body, sig = token.split(".")
    if (len(sig) * 6) % 8 == 0:
        return None
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1]) ^ 0x01
    return f"{head}.{body}.{sig[:-1]}{alphabet[last]}"


def mint_cases(keys):
    """(name, token, expected status or None when only parity is asserted, whether the
    signature reaches the host: RS*/ES* tokens whose key is found and whose signature decodes
    to the right length)."""
    cases = []
    serial = 0

    def add(name, token, expected, reaches_host=True):
        cases.append((name, token, expected, reaches_host))

    def claims(alg):
        nonlocal serial
        serial += 1
        return {"iss": issuer_url(alg), "sub": f"user-{serial}", "aud": AUD, "iat": NOW - 10, "exp": NOW + 3600}

    for alg in ALGS:
        kids = [f"{alg.lower()}-{i}" for i in range(KEYS_PER_ALG)]
        for index, kid in enumerate(kids):
            other = kids[(index + 1) % len(kids)]
            valid = keys.mint(alg, kid, claims(alg))
            add(f"{kid} valid", valid, 200)
            add(f"{kid} valid, second token", keys.mint(alg, kid, claims(alg)), 200)
            # Without `kid` among several keys the policy refuses (unknown_key): parity only.
            add(f"{kid} no kid", keys.mint(alg, kid, claims(alg), {"kid": None}), None, False)
            add(f"{kid} tampered payload", tamper_payload(keys.mint(alg, kid, claims(alg))), 401)
            add(f"{kid} tampered signature", flip_signature_bit(keys.mint(alg, kid, claims(alg))), 401)
            add(f"{kid} signed by {other}, kid {kid}", keys.mint(alg, other, claims(alg), {"kid": kid}), 401)
            bad_no_kid = flip_signature_bit(keys.mint(alg, kid, claims(alg), {"kid": None}))
            add(f"{kid} no kid, tampered signature", bad_no_kid, 401, False)
            odd = non_canonical(keys.mint(alg, kid, claims(alg)))
            if odd is not None:
                add(f"{kid} non-canonical base64", odd, 401, False)
            if alg in ORDER:
                width, order = WIDTH[alg], ORDER[alg]
                token = keys.mint(alg, kid, claims(alg))
                raw = unb64(token.split(".")[2])
                r, s = raw[:width], int.from_bytes(raw[width:], "big")
                high = r + (order - s).to_bytes(width, "big")
                add(f"{kid} high-S", with_signature(token, high), None)
                token = keys.mint(alg, kid, claims(alg))
                raw = unb64(token.split(".")[2])
                der = raw_to_der(raw, width)
                add(f"{kid} DER signature in the JWS", with_signature(token, der), 401, False)
                add(f"{kid} signature one byte short", with_signature(token, raw[:-1]), 401, False)
                add(f"{kid} all-zero signature", with_signature(token, bytes(2 * width)), 401)
            else:
                token = keys.mint(alg, kid, claims(alg))
                sig = unb64(token.split(".")[2])
                add(f"{kid} signature with a zero byte prepended", with_signature(token, b"\x00" + sig), 401, False)
                add(f"{kid} signature one byte short", with_signature(token, sig[1:]), 401, False)
    for alg in PURE_ONLY:
        kid = f"{alg.lower()}-0"
        add(f"{kid} valid (never offered to the host)", keys.mint(alg, kid, claims(alg)), 200, False)
        add(f"{kid} tampered signature", flip_signature_bit(keys.mint(alg, kid, claims(alg))), 401, False)
    return cases


def host_crypto_filter(plugin_config, mode):
    filt = h.wasm_filter(plugin_config)
    if mode is not None:
        filt["typed_config"]["config"]["vm_config"]["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps({"host_crypto": mode}),
        }
    return filt


def start_envoy(binary, plugin_config, upstream, work, mode):
    config = h.envoy_config(plugin_config, h.free_port(), h.free_port(), upstream.port, h.free_port())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"][0] = host_crypto_filter(plugin_config, mode)
    folder = work / (mode or "default")
    folder.mkdir()
    envoy = h.Envoy(binary, config, folder, concurrency=1)
    return envoy


@pytest.fixture(scope="module", params=h.envoy_binaries() or [None], ids=lambda b: Path(b).parts[-7] if b else "no-envoy")
def gates(request):
    binary = request.param
    if binary is None:
        pytest.fail("no pinned Envoy binary found: run scripts/setup first")
    for needed in (h.CLAIMGATE, h.TESTKIT, h.WASM):
        assert Path(needed).exists(), f"{needed} missing: run scripts/setup"
    work = Path(h.scratch())
    keys = h.Keys(work)
    for alg in ALGS + PURE_ONLY:
        count = KEYS_PER_ALG if alg in ALGS else 1
        published = {"keys": []}
        for i in range(count):
            published["keys"] += keys.make(alg, f"{alg.lower()}-{i}")["keys"]
        (work / f"{alg.lower()}.jwks.json").write_text(json.dumps(published))
    policy = work / "policy.toml"
    policy.write_text(policy_text())
    plugin_config = h.compile_policy(policy)
    upstream = h.Upstream()
    on = start_envoy(binary, plugin_config, upstream, work, None)
    off = start_envoy(binary, plugin_config, upstream, work, "off")
    on.wait_ready()
    off.wait_ready()
    yield {"on": on, "off": off, "keys": keys, "policy": policy}
    on.stop()
    off.stop()
    upstream.stop()


def explain_status(policy, token):
    out = subprocess.run([h.CLAIMGATE, "explain", "--policy", str(policy), "--json", "--path", "/api/x", "--token", token],
                         capture_output=True, text=True)
    return json.loads(out.stdout)["status"]


def counter(envoy, name):
    stats = envoy.stats()
    return int(stats.get(f"wasmcustom.{name}", stats.get(name, "0")))


def test_detection_is_logged_and_exposed(gates):
    on, off = gates["on"], gates["off"]
    assert "claimgate: host crypto on" in on.logs(), on.logs()[-3000:]
    assert "claimgate: host crypto off: turned off by vm_config.configuration" in off.logs(), off.logs()[-3000:]
    assert "host crypto off" not in on.logs()
    assert counter(on, "claimgate.host_crypto_enabled") == 1
    assert counter(off, "claimgate.host_crypto_enabled") == 0


def test_host_and_pure_rust_agree_on_every_token(gates):
    on, off = gates["on"], gates["off"]
    cases = mint_cases(gates["keys"])
    checked_before = counter(on, "claimgate.host_crypto_checked_total")
    declined_before = counter(on, "claimgate.host_crypto_declined_total")
    failures = []
    seen = {}
    for name, token, expected, _ in cases:
        host_status = on.request("/api/x", token=token)[0]
        pure_status = off.request("/api/x", token=token)[0]
        explained = explain_status(gates["policy"], token)
        seen[name] = host_status
        if not (host_status == pure_status == explained) or (expected is not None and host_status != expected):
            failures.append(f"{name}: host-on {host_status}, host-off {pure_status}, explain {explained}, expected {expected}")
    assert not failures, f"{len(failures)} of {len(cases)} tokens:\n" + "\n".join(failures)
    # The host decided exactly the signatures that reached it (none fell back to pure Rust):
    # so the host path was taken, and PS256/EdDSA and signatures refused earlier never went.
    reaching = sum(1 for case in cases if case[3])
    checked = counter(on, "claimgate.host_crypto_checked_total") - checked_before
    declined = counter(on, "claimgate.host_crypto_declined_total") - declined_before
    assert (checked, declined) == (reaching, 0), f"host decided {checked}, declined {declined}; expected {reaching}, 0"
    assert counter(off, "claimgate.host_crypto_checked_total") == 0
    high_s = sorted({status for name, status in seen.items() if "high-S" in name})
    print(f"\n{len(cases)} tokens agree; the host decided {checked} signatures; high-S ECDSA answered {high_s}")
