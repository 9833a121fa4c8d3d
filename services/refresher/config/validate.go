package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
)

var bucketRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Validate reports every problem with c, joined, one per line, in a fixed
// order; nil if there is none. It does not apply defaults (see SetDefaults),
// and its messages never show a field's value.
func (c *Config) Validate() error {
	var ps problems
	c.validate(&ps)
	return ps.err()
}

func (c *Config) validate(ps *problems) {
	c.NATS.validateAuth(ps)
	checkHostPort(ps, "nats.embedded.listen", c.NATS.Embedded.Listen)
	if c.NATS.Embedded.StoreDir == "" {
		ps.add(0, "nats.embedded.store_dir", "missing or empty")
	}
	if cl := c.NATS.Embedded.Cluster; cl != nil {
		if cl.Name == "" {
			ps.add(0, "nats.embedded.cluster.name", "missing or empty")
		}
		checkHostPort(ps, "nats.embedded.cluster.listen", cl.Listen)
		for i, r := range cl.Routes {
			if u, err := url.Parse(r); err != nil || u.Scheme == "" || u.Host == "" {
				ps.add(0, itemPath("nats.embedded.cluster.routes", i, ""), "want a URL such as nats-route://10.0.0.2:6222")
			}
		}
	}
	if !bucketRE.MatchString(c.Bucket) {
		ps.add(0, "bucket", "want a KV bucket name: letters, digits, _ and -")
	}
	if c.Lease.TTL < Duration(time.Second) {
		ps.add(0, "lease.ttl", "must be at least 1s")
	} else if c.Lease.RenewDeadline >= c.Lease.TTL {
		ps.add(0, "lease.renew_deadline", "must be less than lease.ttl: the difference is the safety margin for pauses and clock drift")
	} else if c.Lease.RetryPeriod <= 0 || c.Lease.RetryPeriod >= c.Lease.RenewDeadline {
		ps.add(0, "lease.retry_period", "must be positive and less than lease.renew_deadline, so the leader renews several times before its deadline")
	}
	if c.NATS.Replicas < 1 || c.NATS.Replicas > 5 {
		ps.add(0, "nats.replicas", "must be 1 to 5")
	}
	checkHostPort(ps, "http.listen", c.HTTP.Listen)
	checkOneOf(ps, "log.level", c.Log.Level, "debug", "info", "warn", "error")
	checkOneOf(ps, "log.format", c.Log.Format, "text", "json")

	if len(c.Providers) == 0 && len(c.Credentials.Keys) == 0 {
		ps.add(0, "providers", "at least one provider is required (or credentials.keys, for runtime providers only)")
	}
	c.validateCredentials(ps)
	first := make(map[string]int) // provider name → index of its first use
	for i := range c.Providers {
		p := &c.Providers[i]
		path := itemPath("providers", i, p.Name)
		p.validate(ps, path)
		if j, dup := first[p.Name]; dup && wire.ValidName(p.Name) {
			ps.add(0, path+".name", "duplicate: providers[%d] has the same name", j)
		} else if !dup {
			first[p.Name] = i
		}
	}
	// Two providers may not share one credential (SPEC §8): for Daraja each
	// refresh would kill the other's token.
	shared := make(map[string]int) // credential → index of its first use
	for i := range c.Providers {
		p := &c.Providers[i]
		id := p.Credential()
		if id == "" {
			continue
		}
		if j, dup := shared[id]; dup {
			ps.add(0, itemPath("providers", i, p.Name)+"."+p.CredentialField(), "shared: providers[%d] (%s) uses the same credential; for Daraja each would invalidate the other's token", j, c.Providers[j].Name)
		} else {
			shared[id] = i
		}
	}
}

func (c *Config) validateCredentials(ps *problems) {
	if !bucketRE.MatchString(c.Credentials.Bucket) {
		ps.add(0, "credentials.bucket", "want a KV bucket name: letters, digits, _ and -")
	} else if c.Credentials.Bucket == c.Bucket || c.Credentials.Bucket == c.Bucket+"-lease" {
		ps.add(0, "credentials.bucket", "must differ from bucket and from the lease bucket (bucket-lease)")
	}
	ids := make(map[string]int)
	if mb := c.Credentials.MaxBytes; mb != 0 && mb < 1<<20 {
		ps.add(0, "credentials.max_bytes", "must be at least 1048576 (1 MiB), or 0 for the default (256 MiB)")
	}
	if mv := c.Credentials.MaxValueSize; mv != 0 && (mv < 1<<10 || mv > 1<<20) {
		ps.add(0, "credentials.max_value_size", "must be from 1024 to 1048576 bytes, or 0 for the default (16 KiB)")
	}
	if pr := c.Credentials.PutRate; pr < -1 || pr > 1_000_000 {
		ps.add(0, "credentials.put_rate", "must be from 1 to 1000000 providers a second, 0 for the default (2500) or -1 for no bound")
	}
	for i, k := range c.Credentials.Keys {
		path := itemPath("credentials.keys", i, "")
		switch {
		case k.ID == "":
			ps.add(0, path+".id", "missing or empty")
		case !validKeyID(k.ID):
			ps.add(0, path+".id", "want 1 to 32 letters, digits, _ or -")
		}
		if k.Key == "" {
			ps.add(0, path+".key", "missing or empty; want the base64 of 32 random bytes (openssl rand -base64 32)")
		} else if _, err := seal.ParseKey("k", k.Key.Reveal()); err != nil {
			ps.add(0, path+".key", "%s", strings.TrimPrefix(err.Error(), "seal: key: "))
		}
		if j, dup := ids[k.ID]; dup && k.ID != "" {
			ps.add(0, path+".id", "duplicate: credentials.keys[%d] has the same id", j)
		} else if !dup {
			ids[k.ID] = i
		}
	}
	if c.FetchConcurrency < 1 || c.FetchConcurrency > 1024 {
		ps.add(0, "fetch_concurrency", "must be from 1 to 1024")
	}
}

// validKeyID reports whether id is a valid sealing key id.
func validKeyID(id string) bool {
	_, err := seal.ParseKey(id, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	return err == nil
}

func (p *Provider) validate(ps *problems, path string) {
	at := func(field string) string { return join(path, field) }
	required := func(field string, empty bool) {
		if empty {
			ps.add(0, at(field), "missing or empty; kind %s needs it", p.Kind)
		}
	}
	absURL := func(field, s string) {
		required(field, s == "")
		if u, err := url.Parse(s); s != "" && (err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "") {
			ps.add(0, at(field), "want an absolute http or https URL")
		}
	}

	switch {
	case p.Name == "":
		ps.add(0, at("name"), "missing or empty")
	case !wire.ValidName(p.Name):
		ps.add(0, at("name"), "%snot a valid provider name: want [a-z0-9][a-z0-9-]*, at most 64 characters", ps.shown(at("name"), p.Name, " is "))
	}
	switch {
	case p.Kind == "":
		ps.add(0, at("kind"), "missing or empty; want %s", orList(kinds))
	case fieldsOf(p.Kind) == nil:
		hint := ""
		if shown := ps.shown(at("kind"), p.Kind, ""); shown != "" {
			hint = " " + shown
			if m := didYouMean(p.Kind, kinds); m != "" {
				hint += " (did you mean " + m + "?)"
			}
		}
		ps.add(0, at("kind"), "unknown kind%s; want %s", hint, orList(kinds))
	default:
		v := reflect.ValueOf(*p)
		for i := range v.NumField() {
			if name := yamlName(v.Type().Field(i)); !v.Field(i).IsZero() && !slices.Contains(fieldsOf(p.Kind), name) {
				ps.add(0, path, "%s", notForKind(name, p.Kind))
			}
		}
	}

	switch p.Kind {
	case KindDaraja:
		absURL("base_url", p.BaseURL)
		required("consumer_key", p.ConsumerKey == "")
		required("consumer_secret", p.ConsumerSecret == "")
	case KindMPay:
		absURL("base_url", p.BaseURL)
		required("username", p.Username == "")
		required("password", p.Password == "")
		if p.Pool < 1 || p.Pool > 1000 {
			ps.add(0, at("pool"), "must be from 1 to 1000")
		}
	case KindOAuth2:
		absURL("token_url", p.TokenURL)
		required("client_id", p.ClientID == "")
		required("client_secret", p.ClientSecret == "")
		checkOneOf(ps, at("auth_style"), p.AuthStyle, "header", "params")
		for i, s := range p.Scopes {
			if !validScope(s) {
				ps.add(0, itemPath(at("scopes"), i, ""), "want an OAuth2 scope: not empty, no spaces, quotes or backslashes")
			}
		}
		for _, name := range slices.Sorted(maps.Keys(p.Headers)) {
			if !validHeaderName(name) {
				ps.add(0, at("headers"), "%q is not a valid HTTP header name", name)
			} else if !validHeaderValue(p.Headers[name].Reveal()) {
				ps.add(0, at("headers")+"."+name, "the value contains a control character such as a newline")
			}
		}
	case KindAirtel:
		absURL("base_url", p.BaseURL)
		required("client_id", p.ClientID == "")
		required("client_secret", p.ClientSecret == "")
	}

	if p.RefreshBefore < 0 {
		ps.add(0, at("refresh_before"), "must not be negative")
	}
	if p.RefreshCooldown < 0 || p.RefreshCooldown > Duration(time.Hour) {
		ps.add(0, at("refresh_cooldown"), "must be from 0 (the default, 5s) to 1h")
	}
	if p.Timeout < Duration(time.Second) || p.Timeout > Duration(2*time.Minute) {
		ps.add(0, at("timeout"), "must be from 1s to 2m")
	}
}

func checkHostPort(ps *problems, path, s string) {
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		ps.add(0, path, "want host:port, such as 127.0.0.1:8080")
	}
}

func checkOneOf(ps *problems, path, s string, valid ...string) {
	if !slices.Contains(valid, s) {
		ps.add(0, path, "want %s", orList(valid))
	}
}

// orList returns "a", "a or b", "a, b or c", ….
func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// validScope reports whether s is an RFC 6749 §3.3 scope-token.
func validScope(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x21 || c == '"' || c == '\\' || c > 0x7e {
			return false
		}
	}
	return s != ""
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool {
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return s != ""
}

// validHeaderValue reports whether s holds no control character but tab.
func validHeaderValue(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// didYouMean returns the candidate nearest to s if it is near enough to be a
// typo of it (at most a third of its letters wrong, at least one), else "".
func didYouMean(s string, candidates []string) string {
	best, bestD := "", max(1, len(s)/3)+1
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, with a swap of
// two neighbouring letters counted as one edit.
func editDistance(a, b string) int {
	prev2, prev, cur := make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// shown returns a provider's bad name or kind at path as an error shows it,
// quoted, cut to 64 characters and followed by suffix; or "" if the value came
// from an environment variable. Names and kinds are public (a name is a NATS
// subject token and a KV key), so echoing one written in the file helps and
// reveals nothing; a value from ${NAME} may be a secret put in the wrong
// variable, and is never shown; nor is a value of a provider put over NATS
// (ParseProvider), which arrives together with its secrets.
func (ps *problems) shown(path, s, suffix string) string {
	if ps.fromEnv[pathKey(path)] || ps.noLines {
		return ""
	}
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return fmt.Sprintf("%q%s", s, suffix)
}

// validateAuth checks the refresher's own credentials: at most one way to
// authenticate, each complete, and the files they name readable.
func (n *NATS) validateAuth(ps *problems) {
	var ways []string
	if n.Creds != "" {
		ways = append(ways, "nats.creds")
		checkFile(ps, "nats.creds", n.Creds)
	}
	if n.User != "" {
		ways = append(ways, "nats.user")
	}
	if n.NkeySeedFile != "" {
		ways = append(ways, "nats.nkey_seed_file")
		checkFile(ps, "nats.nkey_seed_file", n.NkeySeedFile)
	}
	if len(ways) > 1 {
		ps.add(0, ways[1], "conflicts with %s: authenticate one way only", ways[0])
	}
	if n.Password.Reveal() != "" && n.User == "" {
		ps.add(0, "nats.password", "needs nats.user")
	}
	if n.User != "" && n.Password.Reveal() == "" {
		ps.add(0, "nats.password", "missing or empty: nats.user needs a password")
	}
	if t := n.TLS; t != nil {
		if t.CA != "" {
			checkFile(ps, "nats.tls.ca", t.CA)
		}
		if (t.Cert == "") != (t.Key == "") {
			ps.add(0, "nats.tls", "cert and key go together: set both or neither")
		}
		if t.Cert != "" {
			checkFile(ps, "nats.tls.cert", t.Cert)
		}
		if t.Key != "" {
			checkFile(ps, "nats.tls.key", t.Key)
		}
	}
	if e := n.Embedded; n.URL == "" && e.Config != "" {
		checkFile(ps, "nats.embedded.config", e.Config)
	}
	if n.URL != "" && (n.Embedded.Config != "" || n.Embedded.Insecure) {
		ps.add(0, "nats.embedded", "config and insecure apply to the embedded server only; nats.url names an external one")
	}
}

// checkFile reports a file that cannot be read, naming the field (the
// path is configuration, not a secret, but is not echoed either).
func checkFile(ps *problems, path, file string) {
	if _, err := os.Stat(file); err != nil {
		ps.add(0, path, "cannot read the file: %v", errors.Unwrap(err))
	}
}
