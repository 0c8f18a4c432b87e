// The REST API (/api/v1, errors {"error":{code,message,details}}) and this tab's sign-in tokens.
export const API = "/api/v1";
const STORE = window.sessionStorage; // tokens live only as long as this tab

export const tokens = {
  access: STORE.getItem("vagent.access"),
  refresh: STORE.getItem("vagent.refresh"),
};

export class ApiError extends Error {
  constructor(status, code, message, details, retryAfter) {
    super(message);
    Object.assign(this, { status, code, details, retryAfter });
  }
}

let onExpired = () => {};
/** What to do when the sign-in is over (expired, revoked, refreshed elsewhere). */
export function whenExpired(handler) { onExpired = handler; }

async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const e = (body && body.error) || {};
  return new ApiError(response.status, e.code || "http_" + response.status,
    e.message || `The server answered ${response.status} ${response.statusText}.`,
    e.details || null, response.headers.get("Retry-After"));
}

/** "15 minutes", "1 second": a wait in words, rounded up to what a person reads. */
export function waitWords(seconds) {
  const s = Math.max(1, Math.ceil(Number(seconds)));
  const unit = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (s < 60) return unit(s, "second");
  if (s < 3600) return unit(Math.ceil(s / 60), "minute");
  return unit(Math.ceil(s / 3600), "hour");
}

function sentence(text) {
  let t = String(text || "").trim();
  if (!t) return "";
  if (!/[.!?)]$/.test(t)) t += ".";
  return t.charAt(0).toUpperCase() + t.slice(1);
}

/** An error as one or two proper sentences for people. */
export function describe(err) {
  if (!(err instanceof ApiError)) return sentence((err && err.message) || err);
  const wait = Number(err.retryAfter);
  const timed = (err.code === "rate_limited" || err.code === "account_locked") && wait > 0;
  // the wait is said once, in words, after the message
  let text = timed ? err.message.replace(/[\s:;,]*try again in \d+\s*s\.?$/i, "") : err.message;
  const field = err.details && (err.details.field || err.details.at);
  if (field && !text.includes(field)) text += ` (${field})`;
  text = sentence(text);
  if (timed) text += ` Try again in ${waitWords(wait)}.`;
  return text;
}

let refreshing = null;
export function refreshTokens() {
  // one refresh at a time: a spent refresh token presented twice revokes the whole login
  refreshing = refreshing || (async () => {
    try {
      const response = await fetch(API + "/auth/refresh", {
        method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ refresh_token: tokens.refresh }),
      });
      if (!response.ok) throw await errorOf(response);
      keepTokens(await response.json());
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** fetch `path` (absolute, e.g. /api/v1/me or /webrtc/offer) with the access token, refreshed
 * once on 401 token_expired. Resolves to the JSON body (null for 204). */
export async function request(method, path, body, headers = {}, retried = false) {
  const h = { Accept: "application/json", ...headers };
  if (body !== undefined) h["Content-Type"] = "application/json";
  if (tokens.access) h.Authorization = "Bearer " + tokens.access;
  let response;
  try {
    response = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "network", "Cannot reach the server. Check the connection and try again.");
  }
  if (response.ok) return response.status === 204 ? null : response.json();
  const err = await errorOf(response);
  if (response.status === 401 && err.code === "token_expired" && tokens.refresh && !retried) {
    try {
      await refreshTokens();
    } catch (refreshError) {
      onExpired(refreshError);
      throw refreshError;
    }
    return request(method, path, body, headers, true);
  }
  if (response.status === 401 && tokens.access && /^token_|^refresh_token_/.test(err.code)) onExpired(err);
  throw err;
}

/** Every page of a paged list (`items`, `next_cursor`), up to `max` items. */
export async function all(path, max = 500) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await request("GET", path + sep + "limit=100" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

export function keepTokens(pair) {
  tokens.access = pair.access_token;
  tokens.refresh = pair.refresh_token;
  STORE.setItem("vagent.access", pair.access_token);
  STORE.setItem("vagent.refresh", pair.refresh_token);
}

export function forgetTokens() {
  tokens.access = tokens.refresh = null;
  for (const key of ["vagent.access", "vagent.refresh"]) STORE.removeItem(key);
}

export function idempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // randomUUID() exists only on https or localhost
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
