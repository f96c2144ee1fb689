// A real OpenID provider for tests/test_oidc.py: panva's oidc-provider (pinned in
// tests/node_tools/package.json), configured from a JSON file the test writes.
//
//   node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG: { port, issuer, jwks: {keys: [private JWK]}, clients: [...], audience,
//           accounts_file }. Accounts are re-read from accounts_file on every lookup,
// so a test can change a user's role at the provider and have the next token say so.
// GET /__jwks_count answers how many times the JWKS was fetched (the test checks
// batchd's refetch limit with it). Prints "ready" once it listens.
import { readFileSync } from "node:fs";
import http from "node:http";

const here = new URL(".", import.meta.url);
const { default: Provider } = await import(
  new URL("../node_tools/node_modules/oidc-provider/lib/index.js", here)
);

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
    rpInitiatedLogout: { enabled: true },
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
  ttl: { IdToken: 600, AccessToken: 600 },
});
provider.proxy = false;
for (const event of ["server_error", "grant.error", "authorization.error", "end_session.error"]) {
  provider.on(event, (_ctx, error) => console.error(event, error));
}

let jwksCount = 0;
const handle = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url === "/__jwks_count") {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ count: jwksCount }));
    return;
  }
  if (req.url.split("?")[0] === "/jwks") jwksCount += 1;
  handle(req, res);
});
server.listen(config.port, "127.0.0.1", () => {
  process.stdout.write("ready\n");
});
