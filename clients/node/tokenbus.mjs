// tokenbus from Node.js with the stock NATS client (npm package "nats"):
// ask the refresher for a token over request-reply, and keep an in-memory
// copy of tokens current by following token.updates.<provider> (SPEC §9) —
// or, for a few processes that want every token, with a KV watch. Copy this
// file into a service.
import { ErrorCode, Events } from "nats";

/**
 * An error answered by the refresher (SPEC §3): code 400, 404, 429, 502 or
 * 503. For 429 (a refresh report within the provider's refresh cooldown),
 * retryAfter is the seconds to wait (the Retry-After header).
 */
export class TokenbusError extends Error {
  constructor(code, message, retryAfter = 0) {
    super(message);
    this.name = "TokenbusError";
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// provider -> time (ms) before which no report is sent (a 429's Retry-After).
const coolUntil = new Map();

/**
 * invalidate reports that the provider rejected token (token.refresh) and
 * returns the token to use instead. The refresher refreshes only if token
 * is still its current one, and at most once per the provider's refresh
 * cooldown: within it, it answers 429 with Retry-After, which this function
 * honours — it throws TokenbusError(429, …, retryAfter) and sends no report
 * of that provider again until the cooldown is over.
 */
export async function invalidate(nc, provider, token, { timeout = 10000 } = {}) {
  const until = coolUntil.get(provider) ?? 0;
  const left = until - Date.now();
  if (left > 0) {
    throw new TokenbusError(429, `${provider}: refresh cooldown: not reported again before Retry-After`, Math.ceil(left / 1000));
  }
  coolUntil.delete(provider);
  let msg;
  try {
    msg = await nc.request(`token.refresh.${provider}`, JSON.stringify({ invalid_token: token }), { timeout });
  } catch (err) {
    if (err.code === ErrorCode.NoResponders) {
      throw new TokenbusError(503, "no refresher is answering");
    }
    throw err;
  }
  const code = msg.headers?.get("Nats-Service-Error-Code");
  if (code) {
    const retryAfter = Number(msg.headers.get("Retry-After") || 0);
    if (Number(code) === 429 && retryAfter > 0) coolUntil.set(provider, Date.now() + retryAfter * 1000);
    throw new TokenbusError(Number(code), msg.headers.get("Nats-Service-Error"), retryAfter);
  }
  return msg.json();
}

/**
 * readToken asks token.get.<provider> and returns {token, revision}: the
 * token ({provider, access_token, token_type, issued_at, expires_at}) and the
 * KV revision the refresher stored it at (header Tokenbus-Revision; 0 when
 * absent: a single-use token, never to be cached).
 * It throws a TokenbusError for an error reply, or when no refresher answers.
 */
export async function readToken(nc, provider, { timeout = 2000 } = {}) {
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
  return { token, revision: Number(msg.headers?.get("Tokenbus-Revision") || 0) };
}

/** getToken is readToken returning the token alone. */
export async function getToken(nc, provider, opts) {
  return (await readToken(nc, provider, opts)).token;
}

const NAME = /^[a-z0-9][a-z0-9-]*$/;

/**
 * TokenCache keeps the newest token of providers in memory. get() answers
 * from memory, never with an expired token, and asks the refresher when it
 * has nothing.
 *
 * mode "updates" (the default) follows token.updates.<provider> for each
 * provider named in `providers` or asked for with get(): subscribe, read the
 * current value once (token.get), apply updates in Nats-Sequence order
 * (older ones ignored), read again after a gap (Nats-Last-Sequence is not the
 * sequence held), a reconnect, or a sequence that went back (a recreated
 * bucket); a KV-Operation DEL/PURGE stops serving the token. No JetStream
 * consumer, and it works with the reader permissions of SPEC §10 (publish
 * token.get.P, token.refresh.P; subscribe token.updates.P and the inbox
 * prefix given to connect({inboxPrefix})).
 *
 * mode "kv-watch" watches the whole KV bucket instead (a JetStream consumer
 * per process, JetStream API permissions needed).
 */
export class TokenCache {
  constructor(nc, { mode = "updates", bucket = "tokens", providers = [], timeout = 2000 } = {}) {
    if (mode !== "updates" && mode !== "kv-watch") throw new Error(`unknown mode ${mode}`);
    this.nc = nc;
    this.mode = mode;
    this.bucket = bucket;
    this.providers = providers;
    this.timeout = timeout;
    this.tokens = new Map(); // provider -> token
    this.followed = new Map(); // provider -> {sub, seq, gen, shared}
    this.onToken = () => {};
    this.closed = false;
  }

  /**
   * start begins following; it resolves once the current token of every
   * provider in `providers` is read ("updates") or the bucket is loaded
   * ("kv-watch"). onToken(token, revision) is called for every token
   * applied; onDelete(provider) for a deleted key.
   */
  async start(onToken = () => {}, onDelete = () => {}) {
    this.onToken = onToken;
    this.onDelete = onDelete;
    if (this.mode === "kv-watch") return this.#watch();
    (async () => {
      for await (const s of this.nc.status()) {
        // Whatever was published while disconnected was missed.
        if (s.type === Events.Reconnect) this.#rereadAll();
      }
    })().catch(() => {});
    await Promise.all(this.providers.map((p) => this.#follow(p)));
  }

  /** get returns provider's token from memory, or asks the refresher. */
  async get(provider) {
    const t = this.tokens.get(provider);
    if (t && new Date(t.expires_at) > new Date()) return t;
    if (this.mode !== "updates" || !NAME.test(provider)) return getToken(this.nc, provider, { timeout: this.timeout });
    const st = this.#subscribe(provider);
    const gen = st.gen;
    const { token, revision } = await readToken(this.nc, provider, { timeout: this.timeout });
    this.#read(provider, token, revision, gen, false);
    return token;
  }

  stop() {
    this.closed = true;
    this.watch?.stop();
    for (const st of this.followed.values()) st.sub.unsubscribe();
  }

  #subscribe(provider) {
    let st = this.followed.get(provider);
    if (st) return st;
    st = { seq: 0, gen: 0, shared: false, denied: false };
    st.sub = this.nc.subscribe(`token.updates.${provider}`, {
      callback: (err, msg) => {
        if (!err) return this.#update(provider, msg);
        // The server refused the subscription (permissions): the copy could
        // not be kept current, so this provider is asked for on every get.
        // The -ERR arrives before the reply to the read that followed it.
        st.denied = true;
        this.tokens.delete(provider);
      },
    });
    this.followed.set(provider, st);
    return st;
  }

  async #follow(provider) {
    const st = this.#subscribe(provider);
    const gen = st.gen;
    try {
      const { token, revision } = await readToken(this.nc, provider, { timeout: this.timeout });
      this.#read(provider, token, revision, gen, false);
    } catch (err) {
      if (err instanceof TokenbusError && err.code === 404 && st.gen === gen) this.#drop(provider, 0);
      else if (!(err instanceof TokenbusError)) throw err;
    }
  }

  // reread reads provider again in the background; reset: the read may go
  // back in sequence unless an update came in while it was in flight.
  #reread(provider, reset) {
    const st = this.followed.get(provider);
    if (!st || this.closed) return;
    const gen = st.gen;
    readToken(this.nc, provider, { timeout: this.timeout }).then(
      ({ token, revision }) => this.#read(provider, token, revision, gen, reset),
      (err) => {
        if (err instanceof TokenbusError && err.code === 404 && st.gen === gen) this.#drop(provider, 0);
      },
    );
  }

  #rereadAll() {
    for (const [provider, st] of this.followed) if (st.shared && !st.denied) this.#reread(provider, true);
  }

  #read(provider, token, revision, gen, reset) {
    const st = this.followed.get(provider);
    if (!st || st.denied || !revision) return; // no revision: single-use, never cached
    st.shared = true;
    if (revision > st.seq || (reset && st.gen === gen && revision !== st.seq)) {
      st.seq = revision;
      st.gen++;
      this.tokens.set(provider, token);
      this.onToken(token, revision);
    }
  }

  #drop(provider, seq) {
    const st = this.followed.get(provider);
    if (st) {
      st.gen++;
      if (seq) st.seq = seq;
    }
    this.tokens.delete(provider);
    this.onDelete(provider);
  }

  #update(provider, msg) {
    const st = this.followed.get(provider);
    const seq = Number(msg.headers?.get("Nats-Sequence") || 0);
    if (!st || !seq) return;
    const last = Number(msg.headers.get("Nats-Last-Sequence") || 0);
    const op = msg.headers.get("KV-Operation");
    let token;
    if (op !== "DEL" && op !== "PURGE") {
      try {
        token = msg.json();
      } catch {
        return;
      }
      if (!token.access_token || (token.provider && token.provider !== provider)) return;
    }
    st.shared = true;
    if (seq > st.seq) {
      // A gap: this update is newer, and the current value is read again.
      if (st.seq !== 0 && last !== st.seq) this.#reread(provider, false);
    } else if (seq === st.seq) {
      return;
    } else {
      // Older than the value held: ignored, unless it is the key's first
      // write in a stream that started over (a recreated bucket); read
      // again either way.
      this.#reread(provider, true);
      if (last !== 0) return;
    }
    st.seq = seq;
    if (!token) return this.#drop(provider, seq);
    st.gen++;
    this.tokens.set(provider, token);
    this.onToken(token, seq);
  }

  async #watch() {
    const kv = await this.nc.jetstream().views.kv(this.bucket, { bindOnly: true });
    let ready;
    const loaded = new Promise((resolve) => (ready = resolve));
    this.watch = await kv.watch({ initializedFn: () => ready() });
    (async () => {
      for await (const e of this.watch) {
        // Keys that are not provider names are the refresher's own
        // ("_lease", "_term"): skip them.
        if (!NAME.test(e.key)) continue;
        if (e.operation !== "PUT") {
          this.tokens.delete(e.key);
          this.onDelete(e.key);
          continue;
        }
        const token = e.json();
        if (!token.access_token) continue; // not a token
        this.tokens.set(e.key, token);
        this.onToken(token, e.revision);
      }
    })();
    await loaded;
  }
}

/**
 * followEvents calls onEvent with each event the refresher publishes for
 * provider on token.events.<provider> (SPEC §9): {provider, type, at,
 * detail, …} with type refreshed, refresh_failed (kind, cause, code, status,
 * attempt, retry_in), credentials_rejected, recovered (failing_for), expired,
 * added, rotated, removed or foreign_write. No secret and no token is in
 * them: alert a merchant or page someone from here, without polling. A
 * reader of provider may subscribe (SPEC §10). Returns {stop}. The
 * subscription reaches the server with the connection's next flush: await
 * nc.flush() after this call to receive every event published from then on.
 */
export function followEvents(nc, provider, onEvent) {
  if (!NAME.test(provider)) throw new TokenbusError(400, `provider name "${provider}" is not valid`);
  const sub = nc.subscribe(`token.events.${provider}`);
  (async () => {
    for await (const m of sub) {
      let ev;
      try {
        ev = m.json();
      } catch {
        continue; // not an event: skip it
      }
      onEvent(ev);
    }
  })();
  return { stop: () => sub.unsubscribe() };
}
