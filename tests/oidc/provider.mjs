// A real OpenID provider for tests/test_oidc.py: panva's oidc-provider (pinned in
// tests/node_tools/package.json), configured from a JSON file the test writes.
//
//   node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG: { port, issuer, jwks: {keys: [private JWK]}, clients: [...], audience,
//           accounts_file, end_session (default true) }. Accounts are re-read from
// accounts_file on every lookup, so a test can change a user's role at the provider and
// have the next token say so; an account's "id_token_ttl" (seconds) sets how long its
// ID tokens live (default 600). With end_session false the provider offers no
// end_session_endpoint. GET /__jwks_count and /__discovery_count answer how many times
// the JWKS and the discovery document were fetched (the tests check batchd's limits
// with them). Prints "ready" once it listens.
import { readFileSync } from "node:fs";
import http from "node:http";

const here = new URL(".", import.meta.url);
const { default: Provider, interactionPolicy } = await import(
  new URL("../node_tools/node_modules/oidc-provider/lib/index.js", here)
);

// The console is registered as a "native" client only so that its loopback redirect URI
// may carry any port (RFC 8252); it is a first-party web application, so drop the
// provider's "native clients always see a consent screen" rule — which would also refuse
// every prompt=none renewal with interaction_required.
const policy = interactionPolicy.base();
policy.get("consent").checks.remove("native_client_prompt");

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));

function accounts() {
  return JSON.parse(readFileSync(config.accounts_file, "utf8"));
}

function claimsOf(id) {
  const account = accounts()[id] ?? {};
  const claims = { sub: id };
  for (const name of ["name", "batchd_role", "department_id"]) {
    if (account[name] !== undefined && account[name] !== null) claims[name] = account[name];
  }
  return claims;
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ["batchd-test-cookie-key"] },
  interactions: { policy },
  pkce: { required: () => true },
  scopes: ["openid", "profile", "api"],
  // Like a Keycloak mapper on the client: the role and department come with "profile",
  // the scope batchd's console asks for.
  claims: { openid: ["sub"], profile: ["name", "batchd_role", "department_id"] },
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    return { accountId: id, async claims() { return claimsOf(id); } };
  },
  // A first-party console: no consent screen (the grant covers what was asked).
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope("openid profile");
    grant.addResourceScope(config.audience, "api");
    await grant.save();
    return grant;
  },
  // The API's access tokens are JWTs carrying the same claims as the ID token.
  async extraTokenClaims(_ctx, token) {
    if (!token.accountId) return undefined;
    const { sub, ...rest } = claimsOf(token.accountId);
    return rest;
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: config.end_session !== false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: "api",
        audience: config.audience,
        accessTokenFormat: "jwt",
        accessTokenTTL: 600,
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  ttl: {
    IdToken: (_ctx, token) => Number(accounts()[token.available?.sub]?.id_token_ttl ?? 600),
    AccessToken: 600,
  },
});
provider.proxy = false;
for (const event of ["server_error", "grant.error", "authorization.error", "end_session.error"]) {
  provider.on(event, (_ctx, error) => console.error(event, error));
}

const counts = { jwks: 0, discovery: 0 };
const counted = { "/jwks": "jwks", "/.well-known/openid-configuration": "discovery" };
const handle = provider.callback();
const server = http.createServer((req, res) => {
  const asked = /^\/__(jwks|discovery)_count$/.exec(req.url);
  if (asked) {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ count: counts[asked[1]] }));
    return;
  }
  const name = counted[req.url.split("?")[0]];
  if (name) counts[name] += 1;
  handle(req, res);
});
server.listen(config.port, "127.0.0.1", () => {
  process.stdout.write("ready\n");
});
