// A real OpenID Provider (the certified `oidc-provider` package) shaped like a Keycloak
// realm or a Microsoft Entra ID v2 tenant, for claimgate's end-to-end tests and demo.
//
//   node server.mjs CONFIG.json
//
// It listens on 127.0.0.1, prints one line `READY <port>` when it serves, and issues JWT
// access tokens (RFC 9068) through its real token endpoint: client credentials for service
// principals and the authorization-code flow (with a plain username/password login form)
// for users. Token claims carry what the real providers put there:
//   keycloak: realm_access.roles, resource_access.<client>.roles, azp, preferred_username
//   entra:    roles, groups, scp (delegated only), azp, oid, tid, ver = "2.0"
//
// Key rotation is driven over a loopback-only control path (test use only):
//   POST /_control/rotate  new signing key first, the old one still published
//   POST /_control/retire  only the newest key published
// The provider object is rebuilt on each key change (oidc-provider reads keys once).

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const shape = config.shape;
if (shape !== 'keycloak' && shape !== 'entra') {
  throw new Error(`shape must be keycloak or entra, not ${shape}`);
}

// Where the provider lives and what its endpoints are called, per shape.
const layout = shape === 'keycloak'
  ? {
    mount: `/realms/${config.realm}`,
    issuerPath: `/realms/${config.realm}`,
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      jwks: '/protocol/openid-connect/certs',
      userinfo: '/protocol/openid-connect/userinfo',
      end_session: '/protocol/openid-connect/logout',
      introspection: '/protocol/openid-connect/token/introspect',
      revocation: '/protocol/openid-connect/revoke',
    },
  }
  : {
    mount: `/${config.tenant}`,
    issuerPath: `/${config.tenant}/v2.0`,
    routes: {
      authorization: '/oauth2/v2.0/authorize',
      token: '/oauth2/v2.0/token',
      jwks: '/discovery/v2.0/keys',
      userinfo: '/oidc/userinfo',
      end_session: '/oauth2/v2.0/logout',
    },
  };
const loginPath = `${layout.mount}/login-actions/`;

let keys = [newSigningKey()];
let provider;
let handle;

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

function clientById(id) {
  return config.clients.find((c) => c.client_id === id);
}

function userByName(name) {
  return config.users.find((u) => u.username === name);
}

function userBySub(sub) {
  return config.users.find((u) => u.sub === sub);
}

// Claims the real provider would add to an access token for this subject.
function shapedClaims(token) {
  const client = clientById(token.clientId);
  const user = token.accountId ? userBySub(token.accountId) : undefined;
  if (shape === 'keycloak') {
    const subject = user ?? client.service_account;
    const resourceAccess = {};
    for (const [clientId, roles] of Object.entries(subject.client_roles ?? {})) {
      resourceAccess[clientId] = { roles };
    }
    return {
      typ: 'Bearer',
      azp: token.clientId,
      preferred_username: user ? user.username : `service-account-${token.clientId}`,
      realm_access: { roles: subject.realm_roles ?? [] },
      resource_access: resourceAccess,
    };
  }
  const claims = {
    ver: '2.0',
    tid: config.tenant,
    azp: token.clientId,
    azpacr: '1',
    oid: user ? user.sub : client.object_id,
  };
  if (user) {
    claims.scp = [...token.scopes].filter((s) => s !== 'openid' && s !== 'offline_access').join(' ');
    claims.roles = user.roles ?? [];
    claims.groups = user.groups ?? [];
    claims.preferred_username = user.username;
  } else {
    claims.roles = client.app_roles ?? [];
    claims.groups = client.groups ?? [];
  }
  return claims;
}

function buildProvider() {
  const issuer = `http://${config.host}:${config.port}${layout.issuerPath}`;
  const api = config.api;
  const p = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: c.redirect_uris ? ['authorization_code', 'client_credentials'] : ['client_credentials'],
      response_types: c.redirect_uris ? ['code'] : [],
      redirect_uris: c.redirect_uris ?? [],
      token_endpoint_auth_method: 'client_secret_post',
    })),
    jwks: { keys },
    routes: layout.routes,
    scopes: ['openid', 'profile'],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => api.resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, indicator) => {
          if (indicator !== api.resource) throw new Provider.errors.InvalidTarget();
          return {
            audience: api.audience,
            scope: api.scopes.join(' '),
            accessTokenTTL: config.token_ttl ?? 300,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: (_ctx, token) => shapedClaims(token),
    findAccount: (_ctx, sub) => {
      const user = userBySub(sub);
      if (!user) return undefined;
      return { accountId: sub, claims: () => ({ sub, preferred_username: user.username }) };
    },
    interactions: { url: (_ctx, interaction) => `${loginPath}${interaction.uid}` },
    // The test client talks plain HTTP to loopback.
    cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
  });
  p.proxy = false;
  return p;
}

function rebuild() {
  provider = buildProvider();
  handle = provider.callback();
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

// The login step of the authorization-code flow: a username/password form, as a realm's
// login page. A correct password grants the requested scopes for the API resource.
async function login(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    const page = `<form method="post"><input name="username"><input name="password" type="password"><button>Sign in</button></form>`;
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
    return;
  }
  const form = await readForm(req);
  const user = userByName(form.get('username'));
  if (!user || user.password !== form.get('password')) {
    res.writeHead(401, { 'content-type': 'text/plain' });
    res.end('invalid username or password');
    return;
  }
  const { params } = details;
  const grant = new provider.Grant({ accountId: user.sub, clientId: params.client_id });
  grant.addOIDCScope('openid profile');
  const asked = String(params.scope ?? '').split(' ').filter((s) => config.api.scopes.includes(s));
  grant.addResourceScope(config.api.resource, asked.join(' '));
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { login: { accountId: user.sub }, consent: { grantId } }, { mergeWithLastSubmission: false });
}

function control(req, res) {
  const local = req.socket.remoteAddress === '127.0.0.1' || req.socket.remoteAddress === '::ffff:127.0.0.1';
  if (!local || req.method !== 'POST') {
    res.writeHead(404).end();
    return;
  }
  if (req.url === '/_control/rotate') {
    keys = [newSigningKey(), keys[0]];
  } else if (req.url === '/_control/retire') {
    keys = [keys[0]];
  } else {
    res.writeHead(404).end();
    return;
  }
  rebuild();
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ kids: keys.map((k) => k.kid) }));
}

rebuild();

const server = http.createServer((req, res) => {
  const fail = (err) => {
    console.error(err);
    if (!res.headersSent) res.writeHead(500);
    res.end();
  };
  try {
    if (req.url.startsWith('/_control/')) {
      control(req, res);
    } else if (req.url.startsWith(loginPath)) {
      login(req, res).catch(fail);
    } else if (req.url.startsWith(`${layout.mount}/`)) {
      // Mounted under the realm / tenant path, as the real provider is.
      req.originalUrl = req.url;
      req.url = req.url.slice(layout.mount.length);
      handle(req, res);
    } else {
      res.writeHead(404).end();
    }
  } catch (err) {
    fail(err);
  }
});

server.listen(config.port, '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`);
});
