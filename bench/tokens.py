"""Signing keys, key sets and token populations for the benchmark.

Tokens are shaped like the two identity providers claimgate is deployed with: Keycloak access
tokens (realm and client roles, `azp`, session ids; ≈ 1.5 KB with an RS256 signature) and
Microsoft Entra ID v2 access tokens (`tid`, `oid`, `roles`, `groups`, `x5t`; ≈ 1.9 KB). Every
token names a distinct user, so a population of N tokens is N distinct cache keys.

Minting uses `cryptography` (OpenSSL) in a process pool: the cold-path scenarios need tens of
thousands of never-seen RSA-signed tokens, which one `claimgate-testkit` process per token could
not mint in the benchmark's time budget. Envoy's own jwt_authn (BoringSSL) and claimgate both
verify every population before it is measured (bench.py checks a sample's statuses), so a
minting mistake shows up as a refused token, never as a fast one.

A population is cached under target/bench/ with its keys and reused while its tokens have more
than an hour to live; `--fresh-tokens` mints again.
"""

import base64
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

KEYCLOAK_ISSUER = "https://keycloak.bench.example/realms/ml"
KEYCLOAK_AUDIENCE = "azureml-scoring"
ENTRA_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ENTRA_ISSUER = f"https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"
ENTRA_AUDIENCE = "6e7f4b2a-3c1d-4e5f-9a8b-7c6d5e4f3a2b"
ROLE = "ml-scorer"

# The algorithms of the cold-path sweep, each with its own key in Keycloak's key set.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
# Entra publishes several RSA keys without `alg`; tokens name theirs with `kid` and `x5t`.
ENTRA_KEYS = 3
TOKEN_LIFETIME = 6 * 3600
CACHE_FORMAT = 3


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value, length=None):
    length = length or (value.bit_length() + 7) // 8
    return value.to_bytes(length, "big")


def new_key(alg):
    if alg[:2] in ("RS", "PS"):
        return rsa.generate_private_key(65537, 2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_jwk(key, kid, alg=None):
    """The public half as a JWK; `alg` is left out when None (Entra's keys carry none)."""
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = public.public_numbers()
        jwk = {"kty": "RSA", "n": b64url(_int_bytes(numbers.n)), "e": b64url(_int_bytes(numbers.e))}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[public.curve.name]
        jwk = {"kty": "EC", "crv": crv, "x": b64url(_int_bytes(numbers.x, size)), "y": b64url(_int_bytes(numbers.y, size))}
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    jwk["kid"] = kid
    jwk["use"] = "sig"
    if alg:
        jwk["alg"] = alg
    return jwk


_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def sign(key, alg, signing_input):
    """A JWS signature (RFC 7518): PKCS#1 v1.5, PSS with salt = hash length, raw r||s, Ed25519."""
    if alg == "EdDSA":
        return key.sign(signing_input)
    digest = _HASHES[alg[2:]]()
    if alg.startswith("RS"):
        return key.sign(signing_input, padding.PKCS1v15(), digest)
    if alg.startswith("PS"):
        return key.sign(signing_input, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
    der = key.sign(signing_input, ec.ECDSA(digest))
    r, s = decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    return _int_bytes(r, size) + _int_bytes(s, size)


def _uuid(seed, i):
    return str(uuid.UUID(bytes=hashlib.sha256(f"{seed}/{i}".encode()).digest()[:16], version=4))


def keycloak_claims(i, now, seed):
    """A Keycloak access token's payload for user `i` (realm `ml`, client `ml-gateway`)."""
    user = _uuid(seed, i)
    return {
        "exp": now + TOKEN_LIFETIME,
        "iat": now - 30,
        "auth_time": now - 60,
        "jti": _uuid(seed + "jti", i),
        "iss": KEYCLOAK_ISSUER,
        "aud": [KEYCLOAK_AUDIENCE, "account"],
        "sub": user,
        "typ": "Bearer",
        "azp": "ml-gateway",
        "sid": _uuid(seed + "sid", i),
        "acr": "1",
        "allowed-origins": ["https://ml.example.com"],
        "realm_access": {"roles": ["default-roles-ml", "offline_access", "uma_authorization", ROLE]},
        "resource_access": {
            KEYCLOAK_AUDIENCE: {"roles": ["score", "read-metrics"]},
            "account": {"roles": ["manage-account", "manage-account-links", "view-profile"]},
        },
        "scope": "openid profile email",
        "email_verified": True,
        "name": f"Scoring User {i}",
        "preferred_username": f"scorer-{i}",
        "given_name": "Scoring",
        "family_name": f"User {i}",
        "email": f"scorer-{i}@ml.example.com",
    }


def entra_claims(i, now, seed):
    """A Microsoft Entra ID v2 access token's payload for user `i` (app roles and groups)."""
    digest = hashlib.sha256(f"{seed}/entra/{i}".encode()).digest()
    return {
        "aud": ENTRA_AUDIENCE,
        "iss": ENTRA_ISSUER,
        "iat": now - 30,
        "nbf": now - 30,
        "exp": now + TOKEN_LIFETIME,
        "aio": b64url(hashlib.sha512(digest).digest()) + b64url(digest[:24]),
        "azp": "0f3c2a1b-9d8e-4c7b-a6f5-e4d3c2b1a098",
        "azpacr": "1",
        "groups": [_uuid(seed + "group", g) for g in range(6)],
        "name": f"Scoring User {i}",
        "oid": _uuid(seed + "oid", i),
        "preferred_username": f"scorer-{i}@contoso.example",
        "rh": "0.AXEAv4j5cvGGr0GRqy180BHbR0" + b64url(digest[:12]) + ".",
        "roles": [ROLE, "Model.Invoke"],
        "scp": "user_impersonation",
        "sid": _uuid(seed + "sid", i),
        "sub": b64url(digest),
        "tid": ENTRA_TENANT,
        "uti": b64url(digest[:16]),
        "ver": "2.0",
    }


def _encode(header, claims):
    return (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())).encode()


def _mint_chunk(job):
    """Process-pool worker: mints tokens [start, start+count) of one kind."""
    kind, alg, pem, kid, start, count, now, seed = job
    key = serialization.load_pem_private_key(pem, None) if pem else None
    out = []
    for i in range(start, start + count):
        if kind == "entra":
            header = {"typ": "JWT", "alg": alg, "kid": kid, "x5t": kid}
            claims = entra_claims(i, now, seed)
        else:
            header = {"alg": alg, "typ": "JWT"}
            if kind != "garbage-nokid":
                header["kid"] = kid
            claims = keycloak_claims(i, now, seed)
        signing_input = _encode(header, claims)
        if kind.startswith("garbage"):
            # Well formed, unique, and wrong: a signature of the right length from no key.
            signature = hashlib.shake_256(signing_input).digest(256)
        else:
            signature = sign(key, alg, signing_input)
        out.append(signing_input.decode() + "." + b64url(signature))
    return out


class Population:
    """Keys, key sets and named token lists, minted once and cached in `folder`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.tokens = {}
        self.keys = {}

    def jwks(self, issuer):
        return json.loads((self.folder / f"{issuer}.jwks.json").read_text())

    def ensure(self, wanted, fresh=False, log=print):
        """`wanted`: {name: (kind, alg, count)}; kind is keycloak, entra, garbage-kid or
        garbage-nokid. Reuses the cached population when it holds at least as many tokens of
        every name and they live for another hour."""
        meta_path = self.folder / "population.json"
        now = int(time.time())
        if not fresh and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            enough = all(meta["counts"].get(name, 0) >= spec[2] for name, spec in wanted.items())
            if meta.get("format") == CACHE_FORMAT and enough and meta["minted"] + TOKEN_LIFETIME - now > 3600:
                log(f"tokens: reusing the population minted {(now - meta['minted']) // 60} min ago ({self.folder})")
                for name in wanted:
                    self.tokens[name] = (self.folder / f"{name}.txt").read_text().split("\n")[: wanted[name][2]]
                return
        self._mint(wanted, now, log)

    def _mint(self, wanted, now, log):
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        seed = os.urandom(8).hex()
        pems = {}
        keycloak_keys = []
        for alg in ALGORITHMS:
            key = new_key(alg)
            pems[alg] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            keycloak_keys.append(public_jwk(key, f"kc-{alg.lower()}", alg))
        entra_keys = [new_key("RS256") for _ in range(ENTRA_KEYS)]
        entra_kids = [b64url(hashlib.sha1(f"{seed}/{n}".encode()).digest()) for n in range(ENTRA_KEYS)]
        pems["entra"] = entra_keys[1].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        (self.folder / "keycloak.jwks.json").write_text(json.dumps({"keys": keycloak_keys}))
        (self.folder / "entra.jwks.json").write_text(json.dumps({"keys": [public_jwk(k, kid) for k, kid in zip(entra_keys, entra_kids)]}))

        jobs, order = [], []
        total = sum(spec[2] for spec in wanted.values())
        log(f"tokens: minting {total:,} tokens ({', '.join(f'{n} {s[2]:,}' for n, s in wanted.items())}) …")
        for offset, (name, (kind, alg, count)) in enumerate(wanted.items()):
            pem = pems["entra"] if kind == "entra" else (None if kind.startswith("garbage") else pems[alg])
            kid = entra_kids[1] if kind == "entra" else f"kc-{alg.lower()}"
            # Users are numbered per name, so two lists never share a token.
            base = offset * 10_000_000
            step = 250
            for start in range(0, count, step):
                jobs.append((kind, alg, pem, kid, base + start, min(step, count - start), now, seed))
                order.append(name)
        lists = {name: [] for name in wanted}
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for name, chunk in zip(order, pool.map(_mint_chunk, jobs)):
                lists[name].extend(chunk)
        for name, tokens in lists.items():
            (self.folder / f"{name}.txt").write_text("\n".join(tokens))
            self.tokens[name] = tokens
        meta = {"format": CACHE_FORMAT, "minted": now, "counts": {name: len(t) for name, t in lists.items()}}
        (self.folder / "population.json").write_text(json.dumps(meta))
        log(f"tokens: minted in {time.time() - started:.0f} s")
