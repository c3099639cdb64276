"""The real OpenID Provider for the end-to-end tests and the demo: `oidc-provider` (npm, pinned
in e2e/idp/package.json, installed by scripts/setup) run by e2e/idp/server.mjs, shaped like a
Keycloak realm or an Entra ID v2 tenant.

Tokens come from its real token endpoint: client credentials for service principals, and the
authorization-code flow with PKCE for users (the login form is filled in over HTTP, as a
browser would).
"""

import base64
import hashlib
import http.cookiejar
import json
import secrets
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from harness import stop_process

IDP_DIR = Path(__file__).resolve().parent / "idp"
SERVER = IDP_DIR / "server.mjs"
HOST = "localhost"

# The API both shapes protect. Keycloak names it by client id; Entra by application id.
KEYCLOAK_AUDIENCE = "azureml-scoring"
ENTRA_AUDIENCE = "6e74172b-be56-4843-9ff4-e66a39bb12e3"
ENTRA_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def keycloak_realm(realm="ml"):
    """A realm with a scoring client, a service account with realm and client roles, a retired
    pipeline, and two users."""
    return {
        "shape": "keycloak",
        "realm": realm,
        "api": {"resource": "https://scoring.ml.internal", "audience": KEYCLOAK_AUDIENCE, "scopes": ["score"]},
        "clients": [
            {
                "client_id": "fraud-pipeline",
                "client_secret": "fraud-pipeline-secret",
                "service_account": {"realm_roles": ["ml-scorer"], "client_roles": {KEYCLOAK_AUDIENCE: ["invoke"]}},
            },
            {
                "client_id": "retired-pipeline",
                "client_secret": "retired-pipeline-secret",
                "service_account": {"realm_roles": ["ml-scorer"]},
            },
            {
                "client_id": "reporting",
                "client_secret": "reporting-secret",
                "service_account": {"realm_roles": ["reports-reader"]},
            },
            {"client_id": "notebook", "client_secret": "notebook-secret", "redirect_uris": ["http://localhost/callback"]},
        ],
        "users": [
            {
                "username": "alice",
                "password": "alice-password",
                "sub": "0d4a3f4e-7c53-4a55-9b0f-a11ce0000001",
                "realm_roles": ["default-roles-ml"],
                "client_roles": {KEYCLOAK_AUDIENCE: ["model.fraud.invoke"]},
            },
            {
                "username": "bob",
                "password": "bob-password",
                "sub": "0d4a3f4e-7c53-4a55-9b0f-b0b000000002",
                "realm_roles": ["default-roles-ml"],
            },
        ],
    }


def entra_tenant():
    """An Entra ID v2 tenant: a daemon app with an app role, a user with a group and a
    delegated scope."""
    return {
        "shape": "entra",
        "tenant": ENTRA_TENANT,
        "api": {"resource": f"api://{ENTRA_AUDIENCE}", "audience": ENTRA_AUDIENCE, "scopes": ["Score.Invoke"]},
        "clients": [
            {
                "client_id": "3f1d9a52-0000-4000-8000-000000000d43",
                "client_secret": "daemon-secret",
                "object_id": "a7c2e1f0-0000-4000-8000-00000000da01",
                "app_roles": ["Scoring.Invoke"],
            },
            {
                "client_id": "9c8b7a65-0000-4000-8000-0000000000b1",
                "client_secret": "spa-secret",
                "redirect_uris": ["http://localhost/callback"],
            },
        ],
        "users": [
            {
                "username": "carol@contoso.example",
                "password": "carol-password",
                "sub": "e1b2c3d4-0000-4000-8000-00000000ca01",
                "groups": ["5a1f0e2d-0000-4000-8000-0000000000d5"],
                "roles": [],
            }
        ],
    }


class OidcProvider:
    """One provider process on 127.0.0.1 (addressed as `localhost`, which is the host in its
    issuer)."""

    def __init__(self, realm_config, port, workdir):
        self.config = dict(realm_config, host=HOST, port=port, token_ttl=realm_config.get("token_ttl", 300))
        self.port = port
        path = Path(workdir) / f"idp-{port}.json"
        path.write_text(json.dumps(self.config))
        self.log_path = Path(workdir) / f"idp-{port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["node", str(SERVER), str(path)], stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"oidc-provider did not start: {line!r}\n{self.log_path.read_text()}")
        self.discovery = self.get_json(self._mount() + "/.well-known/openid-configuration")
        self.issuer = self.discovery["issuer"]
        self.jwks_uri = self.discovery["jwks_uri"]
        self.token_endpoint = self.discovery["token_endpoint"]
        self.authorization_endpoint = self.discovery["authorization_endpoint"]

    def _mount(self):
        if self.config["shape"] == "keycloak":
            return f"http://{HOST}:{self.port}/realms/{self.config['realm']}"
        return f"http://{HOST}:{self.port}/{self.config['tenant']}"

    def get_json(self, url):
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def _post_form(self, url, form, opener=None):
        req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())
        try:
            with (opener or urllib.request.build_opener()).open(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def client_token(self, client_id, client_secret, scope):
        """An access token for a service principal, from the client-credentials grant."""
        status, _, body = self._post_form(
            self.token_endpoint,
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret, "scope": scope},
        )
        if status != 200:
            raise RuntimeError(f"token endpoint answered {status}: {body}")
        return json.loads(body)["access_token"]

    def user_token(self, client_id, client_secret, username, password, scope):
        """An access token for a user: authorization request, login form, code exchange (PKCE)."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
        client = next(c for c in self.config["clients"] if c["client_id"] == client_id)
        redirect_uri = client["redirect_uris"][0]
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urllib.parse.urlencode(
            {
                "client_id": client_id,
                "response_type": "code",
                "redirect_uri": redirect_uri,
                "scope": f"openid {scope}",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": secrets.token_urlsafe(8),
            }
        )
        location = self._step(opener, "GET", f"{self.authorization_endpoint}?{query}")
        location = self._step(opener, "POST", location, {"username": username, "password": password})
        location = self._step(opener, "GET", location)
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query).get("code")
        if not code:
            raise RuntimeError(f"no code in redirect: {location}")
        status, _, body = self._post_form(
            self.token_endpoint,
            {
                "grant_type": "authorization_code",
                "code": code[0],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_id": client_id,
                "client_secret": client_secret,
            },
        )
        if status != 200:
            raise RuntimeError(f"token endpoint answered {status}: {body}")
        return json.loads(body)["access_token"]

    def _step(self, opener, method, url, form=None):
        """One browser step that must answer with a redirect; returns the absolute Location."""
        url = urllib.parse.urljoin(f"http://{HOST}:{self.port}/", url)
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        try:
            with opener.open(req, timeout=10) as r:
                raise RuntimeError(f"{method} {url} answered {r.status} without a redirect: {r.read()[:300]!r}")
        except urllib.error.HTTPError as e:
            if e.code not in (302, 303):
                raise RuntimeError(f"{method} {url} answered {e.code}: {e.read()[:300]!r}") from None
            return urllib.parse.urljoin(url, e.headers["location"])

    def rotate(self):
        """New signing key first; the old one is still published."""
        return self._control("rotate")

    def retire(self):
        """Only the newest key is published."""
        return self._control("retire")

    def _control(self, verb):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_control/{verb}", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["kids"]

    def stop(self):
        stop_process(self.proc, self.log)


def _jwt_part(token, index):
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def claims_of(token):
    """The payload of a JWT, unverified (for assertions on its shape)."""
    return _jwt_part(token, 1)


def header_of(token):
    """The JOSE header of a JWT."""
    return _jwt_part(token, 0)
