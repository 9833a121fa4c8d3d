// A runnable example: get a token, then print every new token as the
// refresher publishes it. One JSON object per line on stdout.
//
//   NATS_URL=nats://127.0.0.1:4222 PROVIDER=daraja-sandbox node example.mjs
//
// UPDATES=n exits after n watched tokens (the current one counts); BUCKET
// names the KV bucket (default "tokens").
import { connect } from "nats";
import { getToken, TokenCache, TokenbusError } from "./tokenbus.mjs";

const servers = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const provider = process.env.PROVIDER ?? "daraja-sandbox";
const bucket = process.env.BUCKET ?? "tokens";
const updates = Number(process.env.UPDATES ?? 0);

const print = (o) => console.log(JSON.stringify(o));
const nc = await connect({ servers, name: "tokenbus node example", maxReconnectAttempts: -1 });

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

// KV watch: the current tokens first, then each new one as it is published.
const cache = new TokenCache(nc, { bucket });
let seen = 0;
const done = new Promise((resolve) => {
  cache
    .start((token, revision) => {
      if (token.provider !== provider) return;
      print({ event: "watch", revision, token });
      if (updates > 0 && ++seen >= updates) resolve();
    })
    .then(async () => {
      const t = await cache.get(provider); // from memory now
      print({ event: "ready", access_token_from_memory: t.access_token });
    });
});
if (updates > 0) {
  await done;
  cache.stop();
  await nc.close();
}
