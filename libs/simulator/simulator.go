package simulator

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Kind names a simulated provider. Its values are the provider kinds of the
// refresher's configuration.
type Kind string

// The simulated kinds.
const (
	// Daraja is Safaricom M-Pesa Daraja: a new token invalidates the previous one.
	Daraja Kind = "daraja"
	// MPay is mPay Africa: single-use tokens, many outstanding at once.
	MPay Kind = "mpay"
	// OAuth2 is a generic RFC 6749 client-credentials server shaped like MTN MoMo.
	OAuth2 Kind = "oauth2"
	// Airtel is Airtel Money Africa: OAuth2-like with a JSON request body.
	Airtel Kind = "airtel"
)

var allKinds = []Kind{Daraja, MPay, OAuth2, Airtel}

// ErrUnknownKind is returned, wrapped, by ParseKind for a name that is not a
// simulated kind.
var ErrUnknownKind = errors.New("simulator: unknown provider kind")

// Kinds returns every simulated kind, in a fixed order.
func Kinds() []Kind { return slices.Clone(allKinds) }

// ParseKind returns the Kind named s, or an error wrapping ErrUnknownKind.
func ParseKind(s string) (Kind, error) {
	if k := Kind(s); slices.Contains(allKinds, k) {
		return k, nil
	}
	return "", fmt.Errorf("%w %q", ErrUnknownKind, s)
}

// Config sets the simulated providers' credentials and token lifetimes. The
// zero value of a field, or a negative duration, selects its default.
//
// Lifetimes advertised in expires_in (Daraja, OAuth2, Airtel) are whole
// seconds rounded down, at least 1; a lifetime under a second is raised to one
// second so that a token never expires before its expires_in says.
type Config struct {
	// DarajaKey and DarajaSecret are the consumer key and secret
	// (default "sim-consumer-key" and "sim-consumer-secret").
	DarajaKey, DarajaSecret string
	// DarajaTTL is a Daraja token's lifetime (default 3599s), sent as
	// expires_in in a string such as "3599".
	DarajaTTL time.Duration
	// DarajaExpiresInNumber sends Daraja's expires_in as a JSON number instead.
	DarajaExpiresInNumber bool

	// MPayUsername and MPayPassword are mPay's credentials
	// (default "sim-user" and "sim-pass").
	MPayUsername, MPayPassword string
	// MPayTTL is how long an unused mPay token stays valid (default 2m).
	MPayTTL time.Duration

	// OAuth2ClientID and OAuth2ClientSecret are the OAuth2 client's
	// credentials (default "sim-client" and "sim-client-secret").
	OAuth2ClientID, OAuth2ClientSecret string
	// OAuth2SubscriptionKey, if not empty, must come in the token request's
	// Ocp-Apim-Subscription-Key header, as MTN MoMo requires.
	OAuth2SubscriptionKey string
	// OAuth2TTL is an OAuth2 token's lifetime (default 3600s).
	OAuth2TTL time.Duration
	// OAuth2TokenType is the token_type answered (default "access_token",
	// MoMo's non-standard type).
	OAuth2TokenType string

	// AirtelClientID and AirtelClientSecret are Airtel's client credentials
	// (default "sim-airtel-id" and "sim-airtel-secret").
	AirtelClientID, AirtelClientSecret string
	// AirtelTTL is an Airtel token's lifetime (default 180s).
	AirtelTTL time.Duration

	// Now is the clock that issues and expires tokens (default time.Now).
	// Injected latency runs on the real clock.
	Now func() time.Time
	// LogLimit is how many of the most recent token requests Log keeps
	// (default 100000).
	LogLimit int

	// ManyPrefix is the rule for many credentials (see AddCredential for the
	// other way): any Daraja consumer key, mPay username or OAuth2/Airtel
	// client ID that starts with it is accepted with the secret
	// DerivedSecret(id). Default "merchant-"; "-" turns the rule off.
	ManyPrefix string
}

func (c Config) withDefaults() Config {
	str := func(s *string, def string) {
		if *s == "" {
			*s = def
		}
	}
	dur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	str(&c.DarajaKey, "sim-consumer-key")
	str(&c.DarajaSecret, "sim-consumer-secret")
	dur(&c.DarajaTTL, 3599*time.Second)
	str(&c.MPayUsername, "sim-user")
	str(&c.MPayPassword, "sim-pass")
	dur(&c.MPayTTL, 2*time.Minute)
	str(&c.OAuth2ClientID, "sim-client")
	str(&c.OAuth2ClientSecret, "sim-client-secret")
	dur(&c.OAuth2TTL, 3600*time.Second)
	str(&c.OAuth2TokenType, "access_token")
	str(&c.AirtelClientID, "sim-airtel-id")
	str(&c.AirtelClientSecret, "sim-airtel-secret")
	dur(&c.AirtelTTL, 180*time.Second)
	if c.Now == nil {
		c.Now = time.Now
	}
	str(&c.ManyPrefix, "merchant-")
	if c.ManyPrefix == "-" {
		c.ManyPrefix = ""
	}
	if c.LogLimit <= 0 {
		c.LogLimit = 100_000
	}
	return c
}

// Stats counts one kind's requests. TokenRequests is always TokensIssued plus
// TokenErrors.
type Stats struct {
	// TokenRequests counts every request to the kind's token endpoint,
	// faulted and failed ones included.
	TokenRequests int64 `json:"token_requests"`
	// TokensIssued counts token requests answered with a usable token.
	TokensIssued int64 `json:"tokens_issued"`
	// TokenErrors counts token requests answered without a usable token:
	// errors, injected faults and malformed answers.
	TokenErrors int64 `json:"token_errors"`
	// ProtectedOK counts protected calls that presented a valid token.
	ProtectedOK int64 `json:"protected_ok"`
	// ProtectedRejected counts protected calls answered 401.
	ProtectedRejected int64 `json:"protected_rejected"`
}

// Entry records one token request.
type Entry struct {
	// Time is when the request was answered, on Config.Now's clock.
	Time time.Time `json:"time"`
	// Kind is the provider asked.
	Kind Kind `json:"kind"`
	// Status is the HTTP status answered.
	Status int `json:"status"`
	// UserAgent is the request's User-Agent header.
	UserAgent string `json:"user_agent"`
	// Token is the token issued, or "" if none was.
	Token string `json:"token"`
}

// Route describes one endpoint a Server serves.
type Route struct {
	Method string // HTTP method
	Path   string // URL path, in http.ServeMux pattern syntax
	Doc    string // what it is for
}

// Server simulates every Kind at once. Create it with New; it is an
// http.Handler and is safe for concurrent use.
type Server struct {
	cfg    Config
	mux    *http.ServeMux
	routes []Route

	inFlight, peak atomic.Int64 // token requests being answered, and the most at once
	answered, busy atomic.Int64 // token requests answered, and their total time in the handler (ns)

	mu      sync.Mutex
	kinds   map[Kind]*kindState
	log     []Entry // ring of at most cfg.LogLimit entries
	logNext int     // once the ring is full, the index of its oldest entry
}

var _ http.Handler = (*Server)(nil)

// kindState is one kind's mutable state, guarded by Server.mu.
type kindState struct {
	exclusive bool // a new token invalidates every other (Daraja)
	singleUse bool // the first protected call consumes a token (mPay)

	faults  Faults
	stats   Stats
	tokens  map[string]time.Time // valid token → expiry
	sweepAt int                  // len(tokens) that triggers the next sweep of expired tokens

	creds   map[string]string     // registered credential id → secret (AddCredential)
	current map[string]string     // credential id → its one valid token (exclusive kinds)
	byCred  map[string]*credStats // credential id → its counters
}

// credStats counts one credential's token requests.
type credStats struct{ requests, issued int64 }

// New returns a Server simulating every Kind with cfg, defaults filled in.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg.withDefaults(), mux: http.NewServeMux(), kinds: make(map[Kind]*kindState)}
	for _, k := range allKinds {
		s.kinds[k] = &kindState{
			exclusive: k == Daraja,
			singleUse: k == MPay,
			tokens:    make(map[string]time.Time),
			creds:     make(map[string]string),
			current:   make(map[string]string),
			byCred:    make(map[string]*credStats),
		}
	}
	s.registerDaraja()
	s.registerMPay()
	s.registerOAuth2()
	s.registerAirtel()
	s.registerAdmin()
	return s
}

// ServeHTTP serves the provider and admin endpoints listed in the package
// documentation.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Routes returns every endpoint s serves, in the order of the package
// documentation.
func (s *Server) Routes() []Route { return slices.Clone(s.routes) }

// SetFaults replaces the faults injected into kind p's token requests. It does
// not validate f (see Faults.Validate); an unknown kind is ignored.
func (s *Server) SetFaults(p Kind, f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.kinds[p]; st != nil {
		st.faults = f
	}
}

// Faults returns the faults injected into kind p's token requests.
func (s *Server) Faults(p Kind) Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.kinds[p]; st != nil {
		return st.faults
	}
	return Faults{}
}

// Stats returns kind p's counters; an unknown kind has none.
func (s *Server) Stats(p Kind) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.kinds[p]; st != nil {
		return st.stats
	}
	return Stats{}
}

// Log returns the token requests of every kind, oldest first: all of them, or
// the most recent Config.LogLimit.
func (s *Server) Log() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(slices.Clone(s.log[s.logNext:]), s.log[:s.logNext]...)
}

// Rotate invalidates every currently valid token of kind p, as a provider
// rotating its signing keys would: the next protected call with any of them
// is rejected.
func (s *Server) Rotate(p Kind) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.kinds[p]; st != nil {
		clear(st.tokens)
	}
}

// Reset clears every kind's faults and counters, and the log. Tokens already
// issued stay valid; use Rotate to invalidate them.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.kinds {
		st.faults, st.stats = Faults{}, Stats{}
		clear(st.byCred)
	}
	s.peak.Store(s.inFlight.Load())
	s.log, s.logNext = nil, 0
}

// record counts and logs a token request answered with rep, and makes the
// token rep issues valid. It runs before rep is written, so a client that has
// its answer sees it counted.
func (s *Server) record(k Kind, r *http.Request, rep reply) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.kinds[k]
	st.stats.TokenRequests++
	var cs *credStats
	if rep.cred != "" {
		if cs = st.byCred[rep.cred]; cs == nil {
			cs = &credStats{}
			st.byCred[rep.cred] = cs
		}
		cs.requests++
	}
	if rep.token == "" {
		st.stats.TokenErrors++
	} else {
		st.stats.TokensIssued++
		if cs != nil {
			cs.issued++
		}
		st.add(rep.cred, rep.token, now.Add(rep.ttl), now)
	}
	e := Entry{Time: now, Kind: k, Status: rep.status, UserAgent: r.UserAgent(), Token: rep.token}
	if len(s.log) < s.cfg.LogLimit {
		s.log = append(s.log, e)
		return
	}
	s.log[s.logNext] = e
	s.logNext = (s.logNext + 1) % len(s.log)
}

// use reports whether token is a valid token of kind k, consuming it if the
// kind's tokens are single-use, and counts the protected call.
func (s *Server) use(k Kind, token string) bool {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.kinds[k]
	ok := st.valid(token, now)
	if ok && st.singleUse {
		delete(st.tokens, token)
	}
	if ok {
		st.stats.ProtectedOK++
	} else {
		st.stats.ProtectedRejected++
	}
	return ok
}

func (st *kindState) add(cred, token string, expiry, now time.Time) {
	if st.exclusive {
		// One valid token per credential: a new one kills the previous.
		if old, ok := st.current[cred]; ok {
			delete(st.tokens, old)
		}
		st.current[cred] = token
	}
	if len(st.tokens) >= st.sweepAt {
		for t, exp := range st.tokens {
			if !now.Before(exp) {
				delete(st.tokens, t)
			}
		}
		st.sweepAt = max(2*len(st.tokens), 64)
	}
	st.tokens[token] = expiry
}

func (st *kindState) valid(token string, now time.Time) bool {
	exp, ok := st.tokens[token]
	if ok && !now.Before(exp) {
		delete(st.tokens, token)
		return false
	}
	return ok
}
