// A runnable example: get a token, then print every new token as the
// refresher publishes it. One JSON object per line on stdout.
//
//   NATS_URL=nats://127.0.0.1:4222 PROVIDER=daraja-sandbox node example.mjs
//
// MODE=updates (default: follow token.updates.<provider>, no JetStream
// consumer) or MODE=kv-watch (watch the KV bucket). UPDATES=n exits after n
// tokens followed (the current one counts); BUCKET names the KV bucket
// (default "tokens"); NATS_USER, NATS_PASSWORD and INBOX_PREFIX connect as a
// least-privilege reader (SPEC §10). REPORTS=n reports the current token as
// rejected n times in a row and exits: one refresh, then the refresh
// cooldown (429 with Retry-After) for the rest, which the client honours by
// not sending them. EVENTS=1 also prints the provider's events
// (token.events.<provider>: refresh_failed, expired, recovered, …) as
// {"event":"provider_event",…}.
import { connect } from "nats";
import { followEvents, getToken, invalidate, TokenCache, TokenbusError } from "./tokenbus.mjs";

const servers = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const provider = process.env.PROVIDER ?? "daraja-sandbox";
const bucket = process.env.BUCKET ?? "tokens";
const mode = process.env.MODE ?? "updates";
const updates = Number(process.env.UPDATES ?? 0);

const print = (o) => console.log(JSON.stringify(o));
const opts = { servers, name: "tokenbus node example", maxReconnectAttempts: -1 };
if (process.env.NATS_USER) Object.assign(opts, { user: process.env.NATS_USER, pass: process.env.NATS_PASSWORD });
if (process.env.INBOX_PREFIX) opts.inboxPrefix = process.env.INBOX_PREFIX;
const nc = await connect(opts);

try {
  // Request-reply: works from any NATS client, no state kept.
  const token = await getToken(nc, provider);
  print({ event: "get", token });
} catch (err) {
  if (err instanceof TokenbusError) {
    print({ event: "error", code: err.code, message: err.message });
    await nc.close();
    process.exit(2);
  }
  throw err;
}

const reports = Number(process.env.REPORTS ?? 0);
if (reports > 0) {
  // Report whatever token is current as rejected, again and again.
  for (let i = 0; i < reports; i++) {
    const current = await getToken(nc, provider);
    try {
      const token = await invalidate(nc, provider, current.access_token);
      print({ event: "refreshed", token });
    } catch (err) {
      if (!(err instanceof TokenbusError)) throw err;
      print({ event: "error", code: err.code, message: err.message, retry_after: err.retryAfter });
    }
  }
  await nc.close();
  process.exit(0);
}

// Events: what happens to the provider, as it happens (opt-in).
const events = process.env.EVENTS === "1"
  ? followEvents(nc, provider, (ev) => print({ event: "provider_event", type: ev.type, provider: ev.provider, detail: ev.detail, cause: ev.cause }))
  : null;
if (events) await nc.flush();

// Follow: the current token first, then each new one as it is published.
const cache = new TokenCache(nc, { mode, bucket, providers: [provider] });
let seen = 0;
const done = new Promise((resolve) => {
  cache
    .start(
      (token, revision) => {
        if (token.provider !== provider) return;
        print({ event: "update", revision, token });
        if (updates > 0 && ++seen >= updates) resolve();
      },
      (name) => name === provider && print({ event: "delete", provider: name }),
    )
    .then(async () => {
      const t = await cache.get(provider); // from memory now
      print({ event: "ready", access_token_from_memory: t.access_token });
    });
});
if (updates > 0) {
  await done;
  cache.stop();
  events?.stop();
  await nc.close();
}
