// Package simulator is a local, faithful stand-in for the token APIs of the
// providers tokenbus supports: Safaricom M-Pesa Daraja, mPay Africa, a generic
// OAuth2 client-credentials server (shaped like MTN MoMo) and Airtel Money.
//
// It owns the simulated providers' rules as SPEC §1 documents them: token
// formats and lifetimes, Daraja's one valid token at a time, mPay's single-use
// tokens, each provider's error answers. It also owns fault injection (error
// rate, latency, outage, malformed answers), counters and a log of token
// requests, and an admin API so that another process can drive it.
//
// A [Server] is an [http.Handler]: wrap it in httptest.NewServer in tests, or
// run tools/cmd/simulator. It is safe for concurrent use, draws tokens from
// crypto/rand and starts no goroutines.
//
// Provider endpoints:
//
//	GET  /oauth/v1/generate?grant_type=client_credentials  Daraja token (HTTP Basic)
//	POST /mpesa/stkpush/v1/processrequest                 Daraja protected call (Bearer)
//	POST /v2/auth                                         mPay token (JSON credentials)
//	POST /v2/payments                                     mPay protected call; consumes the token
//	POST /oauth2/token                                    OAuth2 token (RFC 6749 §4.4)
//	POST /collection/token/                               the same, at MTN MoMo's path
//	GET  /oauth2/protected                                OAuth2 protected call (Bearer)
//	POST /auth/oauth2/token                               Airtel token (JSON credentials)
//	GET  /airtel/protected                                Airtel protected call (Bearer)
//
// Admin endpoints:
//
//	GET  /_sim/stats            counters of every kind
//	GET  /_sim/log              every token request, oldest first
//	GET  /_sim/faults/{kind}    the faults injected into a kind
//	PUT  /_sim/faults/{kind}    replace them (a JSON [Faults])
//	POST /_sim/rotate/{kind}    invalidate every valid token of a kind
//	POST /_sim/reset            clear faults, counters and the log
//	PUT  /_sim/credentials/{kind}/{id}  accept a credential, JSON {"secret"}
//	GET  /_sim/credentials/{kind}/{id}  one credential's counters
//	GET  /_sim/inflight         token requests in flight now, and the peak
//
// Many credentials: besides the configured credential of each kind, a
// Server accepts credentials registered with AddCredential (or the admin
// API) and, by rule, any credential id starting with Config.ManyPrefix
// ("merchant-" by default) whose secret is DerivedSecret(id)
// ("sim-secret-<id>"). Each credential has its own counters and, for
// Daraja, its own one valid token; InFlight counts token requests being
// answered across all of them, so a test can check a bound on concurrency.
package simulator
