// tokenbus from Node.js with the stock NATS client (npm package "nats"):
// ask the refresher for a token over request-reply, and keep an in-memory
// copy of every token current with a KV watch. Copy this file into a service.
import { ErrorCode } from "nats";

/** An error answered by the refresher (SPEC §3): code 400, 404, 502 or 503. */
export class TokenbusError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "TokenbusError";
    this.code = code;
  }
}

/**
 * getToken asks the refresher for provider's current token on
 * token.get.<provider> and returns it:
 * {provider, access_token, token_type, issued_at, expires_at}.
 * It throws a TokenbusError for an error reply, or when no refresher answers.
 */
export async function getToken(nc, provider, { timeout = 2000 } = {}) {
  let msg;
  try {
    msg = await nc.request(`token.get.${provider}`, new Uint8Array(0), { timeout });
  } catch (err) {
    if (err.code === ErrorCode.NoResponders) {
      throw new TokenbusError(503, "no refresher is answering");
    }
    throw err;
  }
  const code = msg.headers?.get("Nats-Service-Error-Code");
  if (code) {
    throw new TokenbusError(Number(code), msg.headers.get("Nats-Service-Error"));
  }
  const token = msg.json();
  if (!(new Date(token.expires_at) > new Date())) {
    throw new TokenbusError(503, "the refresher answered an expired token");
  }
  return token;
}

/**
 * TokenCache keeps the newest token of every provider in memory, fed by a
 * watch of the refresher's KV bucket. get() answers from memory, never with
 * an expired token, and falls back to getToken when it has nothing.
 */
export class TokenCache {
  constructor(nc, { bucket = "tokens" } = {}) {
    this.nc = nc;
    this.bucket = bucket;
    this.tokens = new Map();
  }

  /** start watches the bucket; it resolves once the current tokens are loaded. */
  async start(onToken = () => {}) {
    const kv = await this.nc.jetstream().views.kv(this.bucket, { bindOnly: true });
    let ready;
    const loaded = new Promise((resolve) => (ready = resolve));
    this.watch = await kv.watch({ initializedFn: () => ready() });
    (async () => {
      for await (const e of this.watch) {
        // Keys that are not provider names are the refresher's own
        // ("_lease", the leader lease): skip them.
        if (!/^[a-z0-9][a-z0-9-]*$/.test(e.key)) continue;
        if (e.operation !== "PUT") {
          this.tokens.delete(e.key);
          continue;
        }
        const token = e.json();
        if (!token.access_token) continue; // not a token
        this.tokens.set(e.key, token);
        onToken(token, e.revision);
      }
    })();
    await loaded;
  }

  /** get returns provider's token from memory, or asks the refresher. */
  async get(provider) {
    const t = this.tokens.get(provider);
    if (t && new Date(t.expires_at) > new Date()) return t;
    return getToken(this.nc, provider);
  }

  stop() {
    this.watch?.stop();
  }
}
