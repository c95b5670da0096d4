// An independent OpenID provider for appproxy's interoperability tests.
//
// Usage: node tests/interop/provider.mjs CONFIG_JSON_PATH
//
// It wraps oidc-provider (panva's certified implementation) with the small set of
// choices the tests need: HTTPS on 127.0.0.1 only, static clients, users with a
// password and an optional one-time code, PKCE required, no consent screen, claims
// (groups, roles, amr, acr) in the ID token, RP-initiated logout, the device
// authorization grant (RFC 8628) for public clients that ask for it, and plain HTML
// forms that a scripted browser can fill. The configuration file is written by
// tests/nodeprovider.py; see README.md beside this file for its keys.
//
// Prints "READY <port>" on stdout once it listens; exits non-zero with a message on
// stderr when the configuration is bad; exits 0 on SIGTERM or SIGINT, and when its
// standard input (unless a terminal) is closed.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import Provider, { errors, interactionPolicy } from 'oidc-provider';

const { Check, base: basePolicy } = interactionPolicy;

const MAX_FORM_BYTES = 64 * 1024;
const TTL_NAMES = new Set([
  'AccessToken', 'AuthorizationCode', 'DeviceCode', 'Grant', 'IdToken', 'Interaction', 'Session',
]);
// Keys of a user that are not claims.
const SECRET_KEYS = new Set(['password', 'otp']);
// Claims the provider itself sets; a user may not override them.
const RESERVED_CLAIMS = new Set([
  'sub', 'iss', 'aud', 'exp', 'iat', 'nbf', 'jti', 'nonce', 'acr', 'amr', 'auth_time', 'sid',
  'at_hash', 'c_hash', 'azp',
]);

class ConfigError extends Error {}

function fail(message) {
  throw new ConfigError(message);
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNonEmptyString(value) {
  return typeof value === 'string' && value.length > 0;
}

/** Read and check the JSON configuration; throw ConfigError on anything wrong. */
function loadConfig(path) {
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot read configuration ${path}: ${err.message}`);
  }
  if (!isObject(config)) fail('the configuration must be a JSON object');
  const {
    port, issuer, cert, key, clients, users, jwks, ttl = {}, device_interval: deviceInterval,
  } = config;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    fail('"port" must be an integer from 1 to 65535');
  }
  let issuerUrl;
  try {
    issuerUrl = new URL(issuer);
  } catch {
    fail('"issuer" must be an absolute URL');
  }
  if (issuerUrl.protocol !== 'https:') fail('"issuer" must be an https URL');
  if (!isNonEmptyString(cert) || !isNonEmptyString(key)) {
    fail('"cert" and "key" must be paths to PEM files');
  }
  if (!Array.isArray(clients) || clients.length === 0 || !clients.every(isObject)) {
    fail('"clients" must be a non-empty array of client metadata objects');
  }
  if (!clients.every((client) => isNonEmptyString(client.client_id))) {
    fail('every client needs a "client_id" string');
  }
  if (!isObject(users) || Object.keys(users).length === 0) {
    fail('"users" must be a non-empty object mapping account ids to claims');
  }
  for (const [accountId, user] of Object.entries(users)) {
    if (!isObject(user)) fail(`users.${accountId} must be an object`);
    if (!isNonEmptyString(user.password)) fail(`users.${accountId}.password must be a string`);
    if (user.otp !== undefined && !isNonEmptyString(user.otp)) {
      fail(`users.${accountId}.otp must be a string when given`);
    }
    for (const name of Object.keys(user)) {
      if (RESERVED_CLAIMS.has(name)) fail(`users.${accountId}.${name}: the provider sets this claim`);
    }
    for (const name of ['groups', 'roles']) {
      const value = user[name];
      if (value !== undefined && !(Array.isArray(value) && value.every((v) => typeof v === 'string'))) {
        fail(`users.${accountId}.${name} must be an array of strings`);
      }
    }
  }
  if (!isObject(jwks) || !Array.isArray(jwks.keys) || jwks.keys.length === 0) {
    fail('"jwks" must be a JSON Web Key Set with at least one private key');
  }
  if (deviceInterval !== undefined && !(Number.isInteger(deviceInterval) && deviceInterval >= 1)) {
    fail('"device_interval" must be a positive integer when given');
  }
  if (!isObject(ttl)) fail('"ttl" must be an object');
  for (const [name, seconds] of Object.entries(ttl)) {
    if (!TTL_NAMES.has(name)) fail(`unknown ttl "${name}" (known: ${[...TTL_NAMES].join(', ')})`);
    if (!Number.isInteger(seconds) || seconds < 1) fail(`ttl.${name} must be a positive integer`);
  }
  let certPem;
  let keyPem;
  try {
    certPem = readFileSync(cert);
    keyPem = readFileSync(key);
  } catch (err) {
    fail(`cannot read the TLS certificate or key: ${err.message}`);
  }
  return {
    port, issuer, clients, users, jwks, ttl, certPem, keyPem, deviceInterval,
  };
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>
`;
}

function sendHtml(res, status, html) {
  const body = Buffer.from(html, 'utf8');
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': body.length,
    'Cache-Control': 'no-store',
  });
  res.end(body);
}

// The device flow's pages (RFC 8628 section 3.3): plain forms, nothing fetched from
// elsewhere. oidc-provider gives each page its form (hidden xsrf and user_code fields);
// a submit button is put inside it so that a scripted browser can post it as it is.
function withButton(form, button) {
  return form.replace(/<\/form>\s*$/, `${button}\n</form>`);
}

async function deviceInputSource(ctx, form, out, err) {
  let message = '<p>Enter the code shown on your device.</p>';
  if (err && (err.userCode || err.name === 'NoCodeError')) {
    message = '<p class="error">The code you entered is incorrect or has expired. Try again.</p>';
  } else if (err && err.name === 'AbortedError') {
    message = '<p class="error">The sign-in was cancelled.</p>';
  } else if (err) {
    message = `<p class="error">${escapeHtml(out?.error_description ?? 'An error occurred.')}</p>`;
  }
  ctx.type = 'html';
  ctx.body = page('Connect a device', `${message}
${withButton(form.trim(), '<button type="submit">Continue</button>')}`);
}

async function deviceConfirmSource(ctx, form, client, deviceInfo, userCode) {
  const name = client.clientName || client.clientId;
  ctx.type = 'html';
  ctx.body = page('Approve device', `<p><strong>${escapeHtml(name)}</strong> on the device \
showing the code <code id="user-code">${escapeHtml(userCode)}</code> asks to sign in as you.</p>
${withButton(form.trim(), `<button type="submit" id="approve">Approve</button>
<button type="submit" id="abort" name="abort" value="yes">Cancel</button>`)}`);
}

async function deviceSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Device approved', '<p>You are signed in on the device. You can close this page.</p>');
}

function loginForm(uid, { login = '', error } = {}) {
  return page('Sign in', `${error ? `<p class="error">${escapeHtml(error)}</p>\n` : ''}\
<form method="post" action="/interaction/${escapeHtml(uid)}">
<label>Login <input name="login" value="${escapeHtml(login)}" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button>
</form>`);
}

function otpForm(uid, { error } = {}) {
  return page('Verification code', `${error ? `<p class="error">${escapeHtml(error)}</p>\n` : ''}\
<form method="post" action="/interaction/${escapeHtml(uid)}/otp">
<label>Code <input name="otp" inputmode="numeric" autocomplete="one-time-code"></label>
<button type="submit">Verify</button>
</form>`);
}

/** Read an application/x-www-form-urlencoded body, at most MAX_FORM_BYTES. */
function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) {
        reject(new errors.InvalidRequest('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function wantsMfa(params) {
  return typeof params.acr_values === 'string' && params.acr_values.split(' ').includes('mfa');
}

function findUser(users, login) {
  if (Object.hasOwn(users, login)) return [login, users[login]];
  const found = Object.entries(users).find(([, user]) => user.preferred_username === login);
  return found ?? [undefined, undefined];
}

function buildProvider(config) {
  const { users } = config;
  const signingAlg = config.jwks.keys[0].alg;
  // Any other claim a user has (say employee_id) comes with the profile scope.
  const standard = new Set(['name', 'preferred_username', 'email', 'groups', 'roles']);
  const extraClaims = new Set();
  for (const user of Object.values(users)) {
    for (const name of Object.keys(user)) {
      if (!SECRET_KEYS.has(name) && !standard.has(name)) extraClaims.add(name);
    }
  }

  // Step-up: a request asking for acr_values=mfa makes a user who has a one-time code
  // sign in again when the current session was not made with it.
  const policy = basePolicy();
  policy.get('login').checks.add(new Check(
    'mfa_step_up',
    'multi-factor authentication is required',
    (ctx) => {
      const { oidc } = ctx;
      if (!wantsMfa(oidc.params)) return Check.NO_NEED_TO_PROMPT;
      const user = users[oidc.session.accountId];
      if (!user || !user.otp) return Check.NO_NEED_TO_PROMPT;
      return oidc.acr === 'mfa' ? Check.NO_NEED_TO_PROMPT : Check.REQUEST_PROMPT;
    },
  ));

  const ttl = {
    AccessToken: 600,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
    DeviceCode: 600,
    ...config.ttl,
  };

  const provider = new Provider(config.issuer, {
    clients: config.clients,
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...(signingAlg ? { id_token_signed_response_alg: signingAlg } : {}),
    },
    jwks: config.jwks,
    cookies: {
      keys: [randomBytes(32).toString('base64url')],
      long: { signed: true },
      short: { signed: true },
    },
    acrValues: ['pwd', 'mfa'],
    claims: {
      sid: null,
      auth_time: null,
      iss: null,
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      profile: ['name', 'preferred_username', 'groups', 'roles', ...extraClaims],
      email: ['email'],
      groups: ['groups'],
      roles: ['roles'],
    },
    conformIdTokenClaims: false,
    issueRefreshToken: async () => false,
    pkce: { methods: ['S256'], required: () => true },
    responseTypes: ['code'],
    features: {
      devInteractions: { enabled: false },
      claimsParameter: { enabled: true },
      // Only clients whose grant_types hold the device_code grant may use it.
      deviceFlow: {
        enabled: true,
        charset: 'base-20',
        mask: '****-****',
        userCodeInputSource: deviceInputSource,
        userCodeConfirmSource: deviceConfirmSource,
        successSource: deviceSuccessSource,
      },
      rpInitiatedLogout: {
        enabled: true,
        // A plain form: a scripted browser submits it as it is to sign out.
        async logoutSource(ctx, form) {
          const action = /action="([^"]*)"/.exec(form)?.[1] ?? '';
          const xsrf = /name="xsrf" value="([^"]*)"/.exec(form)?.[1] ?? '';
          ctx.type = 'html';
          ctx.body = page('Sign out', `<form method="post" action="${action}">
<input type="hidden" name="xsrf" value="${xsrf}">
<input type="hidden" name="logout" value="yes">
<button type="submit">Sign out</button>
</form>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<p>You are signed out.</p>');
        },
      },
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([name, value]) => `<p><b>${escapeHtml(name)}</b>: ${escapeHtml(value)}</p>`)
        .join('\n'));
    },
    interactions: {
      policy,
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async findAccount(ctx, sub) {
      if (!Object.hasOwn(users, sub)) return undefined;
      const user = users[sub];
      return {
        accountId: sub,
        async claims() {
          const claims = { sub };
          for (const [name, value] of Object.entries(user)) {
            if (!SECRET_KEYS.has(name)) claims[name] = value;
          }
          return claims;
        },
      };
    },
    ttl,
  });
  provider.proxy = false;
  if (config.deviceInterval !== undefined) {
    // oidc-provider leaves "interval" out of the device authorization answer (so
    // clients wait 5 seconds between polls, RFC 8628 section 3.2); tests say less.
    provider.on('device_authorization.success', (ctx, body) => {
      body.interval = config.deviceInterval;
    });
  }
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`provider.mjs: server error: ${err.stack}\n`);
  });
  return provider;
}

/** Grant what the consent prompt asks for, so that no consent screen is shown. */
async function grantConsent(provider, interaction) {
  const { prompt: { details }, params, session } = interaction;
  let grant;
  if (interaction.grantId) {
    grant = await provider.Grant.find(interaction.grantId);
  } else {
    grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  }
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  return interaction.grantId ? {} : { grantId };
}

function makeInteractionHandler(provider, users) {
  // Interactions whose password step passed and that wait for the one-time code:
  // interaction uid -> account id.
  const awaitingOtp = new Map();

  function finishLogin(req, res, accountId, mfa) {
    const result = {
      login: {
        accountId,
        amr: mfa ? ['pwd', 'otp'] : ['pwd'],
        acr: mfa ? 'mfa' : 'pwd',
        remember: false,
      },
    };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }

  return async function handleInteraction(req, res, uid, step) {
    const interaction = await provider.interactionDetails(req, res);
    if (interaction.uid !== uid) {
      throw new errors.SessionNotFound('interaction does not match the interaction cookie');
    }
    const { prompt, params } = interaction;

    if (req.method === 'GET' && step === undefined) {
      if (prompt.name === 'consent') {
        const consent = await grantConsent(provider, interaction);
        await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
        return;
      }
      if (awaitingOtp.has(uid)) {
        sendHtml(res, 200, otpForm(uid));
        return;
      }
      sendHtml(res, 200, loginForm(uid, { login: params.login_hint ?? '' }));
      return;
    }

    if (req.method !== 'POST' || prompt.name !== 'login') {
      sendHtml(res, 405, page('Error', '<p>Method not allowed here.</p>'));
      return;
    }
    const form = await readForm(req);

    if (step === undefined) {
      const login = form.get('login') ?? '';
      const [accountId, user] = findUser(users, login);
      if (!user || form.get('password') !== user.password) {
        sendHtml(res, 200, loginForm(uid, { login, error: 'Invalid login or password.' }));
        return;
      }
      if (wantsMfa(params) && user.otp) {
        awaitingOtp.set(uid, accountId);
        sendHtml(res, 200, otpForm(uid));
        return;
      }
      awaitingOtp.delete(uid);
      await finishLogin(req, res, accountId, false);
      return;
    }

    if (step === 'otp') {
      const accountId = awaitingOtp.get(uid);
      if (accountId === undefined) {
        sendHtml(res, 200, loginForm(uid, { error: 'Sign in with your password first.' }));
        return;
      }
      if (form.get('otp') !== users[accountId].otp) {
        sendHtml(res, 200, otpForm(uid, { error: 'Invalid code.' }));
        return;
      }
      awaitingOtp.delete(uid);
      await finishLogin(req, res, accountId, true);
      return;
    }

    sendHtml(res, 404, page('Not found', '<p>No such page.</p>'));
  };
}

async function main(argv) {
  if (argv.length !== 1) fail('usage: node provider.mjs CONFIG_JSON_PATH');
  const config = loadConfig(argv[0]);
  let provider;
  try {
    provider = buildProvider(config);
  } catch (err) {
    fail(`invalid provider configuration: ${err.message}`);
  }
  // oidc-provider checks static client metadata when a client is first used:
  // check it now, so that a bad client is a start-up error.
  for (const { client_id: clientId } of config.clients) {
    try {
      await provider.Client.find(clientId);
    } catch (err) {
      fail(`invalid client ${clientId}: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}`);
    }
  }
  const handleInteraction = makeInteractionHandler(provider, config.users);
  const oidcCallback = provider.callback();
  const interactionPath = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(otp))?$/;

  const server = createServer({ cert: config.certPem, key: config.keyPem }, (req, res) => {
    const { pathname } = new URL(req.url, 'https://localhost');
    const match = interactionPath.exec(pathname);
    if (!match) {
      oidcCallback(req, res);
      return;
    }
    handleInteraction(req, res, match[1], match[2]).catch((err) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const status = err instanceof errors.SessionNotFound ? 400 : (err.statusCode ?? 500);
      const message = err instanceof errors.OIDCProviderError
        ? `${err.error}: ${err.error_description}` : 'internal error';
      if (status >= 500) process.stderr.write(`provider.mjs: interaction error: ${err.stack}\n`);
      sendHtml(res, status, page('Error', `<p>${escapeHtml(message)}</p>`));
    });
  });

  server.on('error', (err) => {
    process.stderr.write(`provider.mjs: error: cannot listen on 127.0.0.1:${config.port}: ${err.message}\n`);
    process.exit(1);
  });

  const stop = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The launcher holds our standard input open: when it closes (the launcher
  // exited, even without stopping us), stop too, so no provider outlives its test.
  if (!process.stdin.isTTY) {
    process.stdin.on('end', stop);
    process.stdin.on('error', stop);
    process.stdin.resume();
  }

  server.listen(config.port, '127.0.0.1', () => {
    process.stdout.write(`READY ${server.address().port}\n`);
  });
}

main(process.argv.slice(2)).catch((err) => {
  const message = err instanceof ConfigError ? err.message : err.stack;
  process.stderr.write(`provider.mjs: error: ${message}\n`);
  process.exit(2);
});
