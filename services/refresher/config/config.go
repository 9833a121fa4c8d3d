// Package config owns the refresher's YAML configuration file (SPEC §2): it
// reads it, expands ${NAME} environment references, rejects unknown fields,
// applies defaults and validates every value, reporting all problems at once.
//
// Every error is one line starting "config: " that names the file, line,
// field and provider concerned (a problem found by validation is reported at
// the line that sets the field or, for a missing field, at its provider; a
// YAML syntax error at the line where the text stops parsing). An unknown
// field or kind near a known one gets "did you mean …?". Errors never contain
// a field's value or the value of an environment variable: they name
// variables, fields and providers. The values they show are provider names
// and kinds written in the file, even invalid ones, which are public by
// design (a name is a NATS subject token and a KV key); one that comes from
// ${NAME} is never shown.
//
// Validation (Config.Validate) works on a decoded value, so a configuration
// decoded from elsewhere (JSON) gets the same rules and messages, without
// lines.
package config

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// Config is the refresher's configuration.
type Config struct {
	// NATS says which NATS server to use.
	NATS NATS `yaml:"nats"`
	// Bucket is the JetStream KV bucket that holds tokens; default "tokens".
	Bucket string `yaml:"bucket"`
	// Lease configures the leader lease.
	Lease Lease `yaml:"lease"`
	// HTTP configures the health, metrics and status server.
	HTTP HTTP `yaml:"http"`
	// Log configures the refresher's log (an extension of SPEC §2).
	Log Log `yaml:"log"`
	// Providers lists the token providers; at least one unless runtime
	// providers are on (credentials.keys).
	Providers []Provider `yaml:"providers"`
	// Credentials configures runtime providers (SPEC §8).
	Credentials Credentials `yaml:"credentials"`
	// FetchConcurrency bounds the token requests in flight at once, per
	// refresher; default 16, 1 to 1024 (SPEC §8).
	FetchConcurrency int `yaml:"fetch_concurrency"`
}

// Credentials configures the sealed store of runtime providers (SPEC §8).
type Credentials struct {
	// Bucket is the KV bucket of runtime providers; default
	// "tokenbus-credentials". Its replicas are nats.replicas.
	Bucket string `yaml:"bucket"`
	// Keys seal and open the secret fields: the first seals, every one opens.
	// Without keys runtime providers are off.
	Keys []CredentialKey `yaml:"keys"`
	// MaxBytes bounds the bucket's size; 0 means 256 MiB (room for over
	// 100,000 providers). At least 1 MiB.
	MaxBytes int `yaml:"max_bytes"`
	// MaxValueSize bounds one entry, sealed; 0 means 16 KiB. 1 KiB to 1 MiB.
	MaxValueSize int `yaml:"max_value_size"`
	// PutRate bounds how many runtime providers a replica stores per
	// second, through tokenbus.providers.put and put_many together (a
	// request waits its turn); 0 means DefaultPutRate, -1 no bound.
	PutRate int `yaml:"put_rate"`
}

// DefaultPutRate is credentials.put_rate's default: onboarding faster than
// the lease holder fetches tokens gains nothing (16 calls at a time to a
// provider answering in 20 ms fetch 800 tokens a second), and at full speed
// (14,000 a second) it took the CPU the refreshes need: 100,000 providers
// were all ready 4–5 s later and token.get's p99 during the fill was 60 %
// higher (docs/benchmarks.md, issue 20, session 6).
const DefaultPutRate = 2500

// PutsPerSecond is PutRate resolved: DefaultPutRate for 0, 0 (no bound)
// for -1.
func (c Credentials) PutsPerSecond() int {
	switch {
	case c.PutRate == 0:
		return DefaultPutRate
	case c.PutRate < 0:
		return 0
	}
	return c.PutRate
}

// CredentialKey is one sealing key.
type CredentialKey struct {
	// ID is stored with every value the key seals: 1 to 32 letters, digits,
	// _ or -.
	ID string `yaml:"id"`
	// Key is the base64 of 32 random bytes (openssl rand -base64 32).
	Key refresher.Secret `yaml:"key"`
}

// NATS says which NATS server to use: an external one at URL, or, when URL is
// empty, an embedded one.
type NATS struct {
	// URL is the external server's URL; empty runs an embedded server.
	URL string `yaml:"url"`
	// Creds is a .creds file (user JWT and nkey seed) that authenticates the
	// refresher's own connection, to an external or the embedded server.
	Creds string `yaml:"creds"`
	// User and Password authenticate the refresher's own connection with a
	// user name and password (SPEC §10); Password needs User.
	User     string           `yaml:"user"`
	Password refresher.Secret `yaml:"password"`
	// NkeySeedFile is a file holding the nkey seed ("SU…") that
	// authenticates the refresher's own connection.
	NkeySeedFile string `yaml:"nkey_seed_file"`
	// TLS configures TLS for the connection to an external server: the CA
	// that signed the servers' certificates and, for mutual TLS, a client
	// certificate and key.
	TLS *TLS `yaml:"tls"`
	// Replicas is the KV bucket's replica count: 1 to 5; default 3 with an
	// embedded cluster, else 1. Use 3 on a three-node cluster.
	Replicas int `yaml:"replicas"`
	// Embedded configures the embedded server.
	Embedded Embedded `yaml:"embedded"`
}

// Embedded configures the embedded NATS server.
type Embedded struct {
	// Listen is the client host:port; default 127.0.0.1:4222.
	Listen string `yaml:"listen"`
	// StoreDir is the JetStream file store directory; default ./data/nats.
	StoreDir string `yaml:"store_dir"`
	// Cluster, when set, joins the embedded server to a NATS cluster.
	Cluster *Cluster `yaml:"cluster"`
	// Config is a standard nats-server configuration file whose
	// authorization, accounts, tls and JetStream encryption settings
	// (jetstream { cipher, key }) apply to the embedded server. The listen
	// address, store directory and cluster stay tokenbus's: the file must
	// not set them.
	Config string `yaml:"config"`
	// Insecure lets the embedded server listen on a non-loopback address
	// with no authorization. Without it the refresher refuses to start so.
	Insecure bool `yaml:"insecure"`
}

// TLS configures the client side of a TLS connection to NATS.
type TLS struct {
	// CA is a PEM file of the certificate authorities to trust; empty
	// trusts the system's.
	CA string `yaml:"ca"`
	// Cert and Key are PEM files of a client certificate and its key, for
	// servers that verify clients; both or neither.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Cluster configures the embedded server's cluster.
type Cluster struct {
	// Name is the cluster name; required.
	Name string `yaml:"name"`
	// Listen is the route host:port; required.
	Listen string `yaml:"listen"`
	// Routes are the URLs of the other servers, e.g. nats-route://host:6222.
	Routes []string `yaml:"routes"`
}

// Lease configures the leader lease.
type Lease struct {
	// TTL is how long a lease lasts without renewal; default 10s, at least 1s.
	// A standby takes over within about TTL of the leader's last renewal.
	TTL Duration `yaml:"ttl"`
	// RenewDeadline is how long after its last renewal was sent the leader
	// still calls providers; default 2/3 of TTL. TTL − RenewDeadline is the
	// safety margin for pauses and clock-rate differences.
	RenewDeadline Duration `yaml:"renew_deadline"`
	// RetryPeriod is how often the leader renews and a standby checks the
	// lease; default TTL/5. Must be below RenewDeadline.
	RetryPeriod Duration `yaml:"retry_period"`
}

// HTTP configures the health, metrics and status server.
type HTTP struct {
	// Listen is its host:port; default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
}

// Log configures the refresher's log.
type Log struct {
	// Level is debug, info (the default), warn or error.
	Level string `yaml:"level"`
	// Format is text (the default) or json.
	Format string `yaml:"format"`
}

// Provider kinds (SPEC §1).
const (
	KindDaraja = "daraja" // Safaricom M-Pesa Daraja
	KindMPay   = "mpay"   // mPay Africa, single-use tokens
	KindOAuth2 = "oauth2" // generic OAuth2 client credentials, e.g. MTN MoMo
	KindAirtel = "airtel" // Airtel Money Africa
)

// Provider configures one token provider. Which fields apply depends on Kind
// (see Fields); a field of another kind is an error.
type Provider struct {
	// Name is the subject token and KV key: [a-z0-9][a-z0-9-]*.
	Name string `yaml:"name"`
	// Kind is daraja, mpay, oauth2 or airtel.
	Kind string `yaml:"kind"`
	// BaseURL is the provider's absolute http(s) URL (daraja, mpay, airtel).
	BaseURL string `yaml:"base_url"`
	// ConsumerKey is the Daraja app's consumer key (daraja).
	ConsumerKey string `yaml:"consumer_key"`
	// ConsumerSecret is the Daraja app's consumer secret (daraja).
	ConsumerSecret refresher.Secret `yaml:"consumer_secret"`
	// Username is the API user (mpay).
	Username string `yaml:"username"`
	// Password is the API user's password (mpay).
	Password refresher.Secret `yaml:"password"`
	// Pool is how many single-use tokens to keep ready (mpay); default 4,
	// 1 to 1000.
	Pool int `yaml:"pool"`
	// TokenURL is the absolute http(s) URL of the token endpoint (oauth2).
	TokenURL string `yaml:"token_url"`
	// ClientID is the OAuth2 client ID (oauth2, airtel).
	ClientID string `yaml:"client_id"`
	// ClientSecret is the OAuth2 client secret (oauth2, airtel).
	ClientSecret refresher.Secret `yaml:"client_secret"`
	// AuthStyle says where the client credentials go (oauth2): "header"
	// (HTTP Basic, the default) or "params" (the form body).
	AuthStyle string `yaml:"auth_style"`
	// Scopes are the requested OAuth2 scopes (oauth2).
	Scopes []string `yaml:"scopes"`
	// Headers are extra headers on the token request (oauth2), e.g. MoMo's
	// Ocp-Apim-Subscription-Key; values may be secrets.
	Headers map[string]refresher.Secret `yaml:"headers"`
	// RefreshBefore is how long before expiry to refresh; 0 leaves it to the
	// refresher, which scales a default to the token lifetime.
	RefreshBefore Duration `yaml:"refresh_before"`
	// Timeout bounds each token request; default 10s, 1s to 2m.
	Timeout Duration `yaml:"timeout"`
	// RefreshCooldown is the least time between two refreshes forced by
	// token.refresh reports (SPEC §3); 0 means the default, 5s; at most 1h.
	RefreshCooldown Duration `yaml:"refresh_cooldown"`
}

// Credential identifies the account p calls the provider with: its kind,
// its token endpoint and its key, client or user (never the secret), as a
// SHA-256 digest, so the value held in memory reveals nothing. Two providers
// with the same Credential share one account: the refresher refuses that
// (for Daraja each would kill the other's token), and its gate admits one
// call per Credential at a time. "" if p has no key set (invalid anyway).
func (p Provider) Credential() string {
	var endpoint, id string
	switch p.Kind {
	case KindDaraja:
		endpoint, id = p.BaseURL, p.ConsumerKey
	case KindMPay:
		endpoint, id = p.BaseURL, p.Username
	case KindOAuth2:
		endpoint, id = p.TokenURL, p.ClientID
	case KindAirtel:
		endpoint, id = p.BaseURL, p.ClientID
	}
	if id == "" {
		return ""
	}
	endpoint = strings.TrimRight(strings.ToLower(strings.TrimSpace(endpoint)), "/")
	sum := sha256.Sum256([]byte(p.Kind + "\x00" + endpoint + "\x00" + id))
	return hex.EncodeToString(sum[:])
}

// CredentialField names the YAML field that identifies p's account (the
// field a shared-credential error points at).
func (p Provider) CredentialField() string {
	switch p.Kind {
	case KindDaraja:
		return "consumer_key"
	case KindMPay:
		return "username"
	default:
		return "client_id"
	}
}

// commonFields apply to every kind; kindFields to one kind each.
var (
	commonFields = []string{"name", "kind", "refresh_before", "timeout", "refresh_cooldown"}
	kindFields   = map[string][]string{
		KindDaraja: {"base_url", "consumer_key", "consumer_secret"},
		KindMPay:   {"base_url", "username", "password", "pool"},
		KindOAuth2: {"token_url", "client_id", "client_secret", "auth_style", "scopes", "headers"},
		KindAirtel: {"base_url", "client_id", "client_secret"},
	}
	kinds = []string{KindDaraja, KindMPay, KindOAuth2, KindAirtel}
)

// Fields returns the YAML names of the fields that apply to p.Kind, or nil
// for an unknown kind.
func (p Provider) Fields() []string { return slices.Clone(fieldsOf(p.Kind)) }

// allFields is commonFields and each kind's kindFields, joined once:
// validation asks for them once per field of every provider parsed (a put
// of 100,000 providers joined them 1.1 million times, 3.5 % of what a
// 100,000-provider onboarding and fill allocated; issue 20).
var allFields = func() map[string][]string {
	m := make(map[string][]string, len(kindFields))
	for k, f := range kindFields {
		m[k] = slices.Concat(commonFields, f)
	}
	return m
}()

// fieldsOf is Fields for kind, shared: not to be modified.
func fieldsOf(kind string) []string { return allFields[kind] }

// Duration is a time.Duration written in YAML as "10s", "5m" or "1h30m". A
// number without a unit (other than 0) and a negative duration are errors.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String returns d in time.Duration's format, e.g. "1m30s".
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText returns d in time.Duration's format.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses a duration such as "10s"; empty text is 0. It does not
// echo the text in its error.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := parseDuration(string(text))
	if err != nil {
		return fmt.Errorf("config: invalid duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil && strings.Trim(s, "0123456789.") == "":
		return 0, errors.New("a number needs a unit, such as 10s or 5m")
	case err != nil:
		return 0, errors.New("want a duration such as 10s, 5m or 1h30m")
	case d < 0:
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

// maxFileSize is the largest configuration file Load reads: room for tens of
// thousands of providers (10,000 take about 1.5 MiB).
const maxFileSize = 16 << 20

// Load reads the configuration file at path (at most 16 MiB) and parses it as
// Parse does. lookup returns an environment variable's value and whether it
// is set; os.LookupEnv fits, and nil means no variable is set. Every error
// names the file.
func Load(path string, lookup func(string) (string, bool)) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("config: %s: larger than 16 MiB", path)
	}
	return parse(data, lookup, path)
}

// Parse parses a YAML configuration, expands ${NAME} references with lookup
// (nil means no variable is set), applies defaults and validates the result.
// The error joins every problem found, one per line: a syntax error alone;
// otherwise every unset variable, unknown field and malformed value; and only
// when there are none, every problem Validate finds.
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	return parse(data, lookup, "")
}

func parse(data []byte, lookup func(string) (string, bool), source string) (*Config, error) {
	ps := &problems{source: source, lines: map[string]int{}, fromEnv: map[string]bool{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		ps.add(syntaxLine(data), "", "%s", yamlPrefix.ReplaceAllString(err.Error(), ""))
		return nil, ps.err()
	}
	if len(doc.Content) == 0 || doc.Content[0].Tag == "!!null" {
		ps.add(0, "", "the configuration is empty")
		return nil, ps.err()
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		ps.add(more.Line, "", "a second YAML document; the configuration must be one document")
		return nil, ps.err()
	}

	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	var c Config
	d := decoder{problems: ps, lookup: lookup}
	d.decode(doc.Content[0], reflect.ValueOf(&c).Elem(), "")
	if len(ps.list) > 0 {
		return nil, ps.err()
	}
	c.SetDefaults()
	c.validate(ps)
	if len(ps.list) > 0 {
		return nil, ps.err()
	}
	return &c, nil
}

// SetDefaults fills in the default of every unset (zero) field that has one.
func (c *Config) SetDefaults() {
	setDefault(&c.NATS.Embedded.Listen, "127.0.0.1:4222")
	setDefault(&c.NATS.Embedded.StoreDir, "./data/nats")
	setDefault(&c.Bucket, "tokens")
	setDefault(&c.Lease.TTL, Duration(10*time.Second))
	setDefault(&c.Lease.RenewDeadline, c.Lease.TTL*2/3)
	setDefault(&c.Lease.RetryPeriod, c.Lease.TTL/5)
	if c.NATS.Embedded.Cluster != nil && c.NATS.URL == "" {
		setDefault(&c.NATS.Replicas, 3)
	}
	setDefault(&c.NATS.Replicas, 1)
	setDefault(&c.HTTP.Listen, "127.0.0.1:8080")
	setDefault(&c.Log.Level, "info")
	setDefault(&c.Log.Format, "text")
	setDefault(&c.Credentials.Bucket, "tokenbus-credentials")
	setDefault(&c.FetchConcurrency, 16)
	for i := range c.Providers {
		c.Providers[i].SetDefaults()
	}
}

// SetDefaults fills in the default of every unset field of p that has one.
func (p *Provider) SetDefaults() {
	setDefault(&p.Timeout, Duration(10*time.Second))
	switch p.Kind {
	case KindMPay:
		setDefault(&p.Pool, 4)
	case KindOAuth2:
		setDefault(&p.AuthStyle, "header")
	}
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// yamlPrefix is the start of a YAML error message: the package, and a line
// that for many errors is where the enclosing block starts, not the problem.
var yamlPrefix = regexp.MustCompile(`^yaml: (line \d+: )?`)

// syntaxLine returns the line of data's first YAML syntax error: the shortest
// prefix of whole lines that does not parse ends there. (The YAML package
// reports where the enclosing block starts, often lines earlier.)
func syntaxLine(data []byte) int {
	lines := bytes.SplitAfter(data, []byte("\n"))
	fails := func(k int) bool {
		dec := yaml.NewDecoder(bytes.NewReader(bytes.Join(lines[:k], nil)))
		for {
			var n yaml.Node
			if err := dec.Decode(&n); err != nil {
				return !errors.Is(err, io.EOF)
			}
		}
	}
	lo, hi := 0, len(lines) // the prefix of lo lines parses, that of hi does not
	for hi-lo > 1 {
		if mid := (lo + hi) / 2; fails(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

// problems collects configuration errors, each one line starting "config: ",
// then the file (if any), the line (if known) and the field's path.
type problems struct {
	source string
	list   []problem
	// lines maps a field's path (without provider names, see pathKey) to
	// the line that sets it, for the problems Validate finds, which know
	// paths but not lines. Nil when there is no file (a decoded value).
	lines map[string]int
	// fromEnv holds the paths (as in lines) whose value uses ${NAME}: such a
	// value is never shown, not even a provider name.
	fromEnv map[string]bool
	// noLines drops line numbers: a JSON provider (ParseProvider) has none
	// worth showing, its messages name the field.
	noLines bool
}

// pathKey is path without the provider names that itemPath adds, so that a
// path made from the YAML tree and one made from the decoded value agree.
func pathKey(path string) string { return namePart.ReplaceAllString(path, "") }

var namePart = regexp.MustCompile(` \([^)]*\)`)

// setLine records that line sets path.
func (ps *problems) setLine(path string, line int) {
	if ps.lines == nil {
		ps.lines = map[string]int{}
	}
	ps.lines[pathKey(path)] = line
}

// markFromEnv records that path's value uses ${NAME}.
func (ps *problems) markFromEnv(path string) {
	if ps.fromEnv == nil {
		ps.fromEnv = map[string]bool{}
	}
	ps.fromEnv[pathKey(path)] = true
}

// lineOf returns the line that sets path or, if it is not set there, the
// nearest enclosing field or list item that is (a missing field is reported
// at its provider); 0 if none is known.
func (ps *problems) lineOf(path string) int {
	for k := pathKey(path); k != ""; {
		if l, ok := ps.lines[k]; ok {
			return l
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

type problem struct {
	line int // 0 if unknown
	msg  string
}

// maxProblems is the most problems reported; an operator fixes those first.
const maxProblems = 100

func (ps *problems) add(line int, path, format string, args ...any) {
	switch {
	case len(ps.list) == maxProblems:
		ps.list = append(ps.list, problem{math.MaxInt, fmt.Sprintf("config: more than %d problems; fix these first", maxProblems)})
		return
	case len(ps.list) > maxProblems:
		return
	}
	if line == 0 {
		line = ps.lineOf(path)
	}
	if ps.noLines {
		line = 0
	}
	var b strings.Builder
	b.WriteString("config: ")
	switch {
	case ps.source != "" && line > 0:
		fmt.Fprintf(&b, "%s:%d: ", ps.source, line)
	case ps.source != "":
		b.WriteString(ps.source + ": ")
	case line > 0:
		fmt.Fprintf(&b, "line %d: ", line)
	}
	if path != "" {
		b.WriteString(path + ": ")
	}
	fmt.Fprintf(&b, format, args...)
	ps.list = append(ps.list, problem{line, b.String()})
}

// err joins the problems in the order of their lines, then of their finding;
// nil if there are none.
func (ps *problems) err() error {
	slices.SortStableFunc(ps.list, func(a, b problem) int { return cmp.Compare(a.line, b.line) })
	errs := make([]error, len(ps.list))
	for i, p := range ps.list {
		errs[i] = errors.New(p.msg)
	}
	return errors.Join(errs...)
}
