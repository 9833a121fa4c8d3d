package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// env is the fake environment of these tests. Every non-empty value counts
// as secret: none may appear in an error. Each value has an upper-case letter
// so that it is not a valid provider name, the one value errors show.
var env = map[string]string{
	"MPESA_CONSUMER_KEY":    "ck-7Hq2-consumer-key",
	"MPESA_CONSUMER_SECRET": "cs-9Zr4-consumer-secret",
	"MPAY_USERNAME":         "mu-3Kd8-username",
	"MPAY_PASSWORD":         "mp-5Wn1-password",
	"MOMO_USER":             "9f1c2e4a-Momo-user",
	"MOMO_KEY":              "mk-2Lp6-momo-key",
	"MOMO_SUBSCRIPTION_KEY": "sk-8Tb3-subscription",
	"AIRTEL_CLIENT_ID":      "ai-4Vg7-client-id",
	"AIRTEL_CLIENT_SECRET":  "as-6Jx5-client-secret",
	"INJECT":                "In\"j\n  pool: 9\n  kind: daraja # ${MPAY_PASSWORD} &a *b !!int",
	"EMPTY":                 "",
}

func lookup(name string) (string, bool) {
	v, ok := env[name]
	return v, ok
}

// checkNoSecrets fails if msg contains any value of env, raw or quoted.
func checkNoSecrets(tb testing.TB, msg string) {
	tb.Helper()
	for name, v := range env {
		if v == "" {
			continue
		}
		q := strconv.Quote(v)
		if strings.Contains(msg, v) || strings.Contains(msg, q[1:len(q)-1]) {
			tb.Errorf("error shows the value of %s:\n%s", name, msg)
		}
	}
}

func TestLoadSpecExample(t *testing.T) {
	c, err := Load("testdata/refresher.yaml", lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		NATS:   NATS{Replicas: 1, Embedded: Embedded{Listen: "127.0.0.1:4222", StoreDir: "./data/nats"}},
		Bucket: "tokens",
		Lease:  Lease{TTL: Duration(10 * time.Second), RenewDeadline: Duration(10 * time.Second * 2 / 3), RetryPeriod: Duration(2 * time.Second)},
		HTTP:   HTTP{Listen: "127.0.0.1:8080"},
		Log:    Log{Level: "info", Format: "text"},
		Providers: []Provider{{
			Name: "daraja-sandbox", Kind: "daraja", BaseURL: "https://sandbox.safaricom.co.ke",
			ConsumerKey: "ck-7Hq2-consumer-key", ConsumerSecret: "cs-9Zr4-consumer-secret",
			RefreshBefore: Duration(5 * time.Minute), Timeout: Duration(10 * time.Second),
		}, {
			Name: "mpay", Kind: "mpay", BaseURL: "https://api.mpayafrica.co.tz",
			Username: "mu-3Kd8-username", Password: "mp-5Wn1-password", Pool: 4,
			Timeout: Duration(10 * time.Second),
		}, {
			Name: "momo-collection", Kind: "oauth2", TokenURL: "https://sandbox.momodeveloper.mtn.com/collection/token/",
			ClientID: "9f1c2e4a-Momo-user", ClientSecret: "mk-2Lp6-momo-key", AuthStyle: "header", Scopes: []string{},
			Headers: map[string]refresher.Secret{"Ocp-Apim-Subscription-Key": "sk-8Tb3-subscription"},
			Timeout: Duration(10 * time.Second),
		}, {
			Name: "airtel-ke", Kind: "airtel", BaseURL: "https://openapiuat.airtel.africa",
			ClientID: "ai-4Vg7-client-id", ClientSecret: "as-6Jx5-client-secret",
			Timeout: Duration(10 * time.Second),
		}},
		Credentials:      Credentials{Bucket: "tokenbus-credentials"},
		FetchConcurrency: 16,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %#v\nwant %#v", *c, *want)
		for i := range c.Providers {
			p, w := c.Providers[i], want.Providers[i]
			if p.ConsumerSecret != w.ConsumerSecret || p.Password != w.Password || p.ClientSecret != w.ClientSecret {
				t.Errorf("providers[%d]: secrets differ", i)
			}
		}
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate after Load: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	_, err := Parse([]byte(`
providers:
  - {name: m, kind: mpay, base_url: "http://localhost:9000", username: u, password: p}
  - {name: o, kind: oauth2, token_url: "http://localhost:9000/token", client_id: i, client_secret: s}
  - {name: d, kind: daraja, base_url: "http://localhost:9000", consumer_key: k, consumer_secret: s, pool: 0, auth_style: ""}
`), nil)
	if err == nil || !strings.Contains(err.Error(), `providers[2] (d): field "pool" does not apply to kind daraja`) {
		t.Fatalf("a foreign field set to its zero value: got %v", err)
	}
	c, err := Parse([]byte(`
lease: {ttl: 0s}
providers:
  - {name: m, kind: mpay, base_url: "http://localhost:9000", username: u, password: p}
  - {name: o, kind: oauth2, token_url: "http://localhost:9000/token", client_id: i, client_secret: s}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := []any{c.NATS.Embedded.Listen, c.NATS.Embedded.StoreDir, c.Bucket, c.Lease.TTL.D(), c.HTTP.Listen, c.Log.Level, c.Log.Format,
		c.Providers[0].Pool, c.Providers[0].Timeout.D(), c.Providers[0].AuthStyle, c.Providers[1].AuthStyle, c.Providers[1].Pool}
	want := []any{"127.0.0.1:4222", "./data/nats", "tokens", 10 * time.Second, "127.0.0.1:8080", "info", "text",
		4, 10 * time.Second, "", "header", 0}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults:\ngot  %v\nwant %v", got, want)
	}
}

// Provider snippets for building test files; each ends inside its provider's
// mapping, so a test can append a field to the last one.
const (
	daraja = `
  - name: daraja-sandbox
    kind: daraja
    base_url: https://sandbox.safaricom.co.ke
    consumer_key: ${MPESA_CONSUMER_KEY}
    consumer_secret: ${MPESA_CONSUMER_SECRET}
`
	mpay = `
  - name: mpay
    kind: mpay
    base_url: https://api.mpayafrica.co.tz
    username: ${MPAY_USERNAME}
    password: ${MPAY_PASSWORD}
`
	momo = `
  - name: momo
    kind: oauth2
    token_url: https://sandbox.momodeveloper.mtn.com/collection/token/
    client_id: ${MOMO_USER}
    client_secret: ${MOMO_KEY}
`
	airtel = `
  - name: airtel-ke
    kind: airtel
    base_url: https://openapiuat.airtel.africa
    client_id: ${AIRTEL_CLIENT_ID}
    client_secret: ${AIRTEL_CLIENT_SECRET}
`
)

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		want       []string // each must appear in the error
	}{
		// Environment variables.
		{"unset variable", "providers:" + strings.Replace(daraja, "MPESA_CONSUMER_SECRET", "MPESA_CONSUMER_SECRET_X", 1),
			[]string{"line 6: providers[0] (daraja-sandbox).consumer_secret: environment variable MPESA_CONSUMER_SECRET_X is not set"}},
		{"unset variables all reported", "bucket: ${NO_BUCKET}\nhttp: {listen: \"${NO_HOST}:${NO_PORT}\"}\nproviders:" + daraja,
			[]string{"line 1: bucket: environment variable NO_BUCKET is not set", "line 2: http.listen: environment variable NO_HOST is not set",
				"line 2: http.listen: environment variable NO_PORT is not set"}},
		{"unterminated reference", "providers:" + daraja + "    refresh_before: ${MPESA\n",
			[]string{`providers[0] (daraja-sandbox).refresh_before: unterminated "${"`}},
		{"bad variable name", "providers:" + strings.Replace(daraja, "MPESA_CONSUMER_KEY", "MPESA-KEY", 1),
			[]string{`providers[0] (daraja-sandbox).consumer_key: bad variable name`}},
		{"empty variable", "providers:" + strings.Replace(daraja, "MPESA_CONSUMER_SECRET", "EMPTY", 1),
			[]string{"providers[0] (daraja-sandbox).consumer_secret: missing or empty; kind daraja needs it"}},

		// Structure.
		{"syntax error", "bucket: tokens\nproviders:\n\t- name: x\n", []string{"config: line 3: found character that cannot start any token"}},
		{"empty file", "", []string{"config: the configuration is empty"}},
		{"only comments", "# nothing here\n", []string{"config: the configuration is empty"}},
		{"two documents", "providers:" + daraja + "---\nbucket: x\n", []string{"a second YAML document"}},
		{"top-level unknown field", "bukcet: tokens\nproviders:" + daraja, []string{`line 1: unknown field "bukcet"`}},
		{"nested unknown field", "nats:\n  embeded: {}\nproviders:" + daraja, []string{`line 2: nats: unknown field "embeded"`}},
		{"provider unknown field", "providers:" + daraja + "    consumer_sekret: x\n",
			[]string{`line 7: providers[0] (daraja-sandbox): unknown field "consumer_sekret"`}},
		{"field of another kind", "providers:" + daraja + "    pool: 4\n",
			[]string{`line 7: providers[0] (daraja-sandbox): field "pool" does not apply to kind daraja; it is for mpay`}},
		{"field of other kinds", "providers:" + mpay + "    token_url: https://x\n    client_id: x\n",
			[]string{`providers[0] (mpay): field "token_url" does not apply to kind mpay; it is for oauth2`,
				`providers[0] (mpay): field "client_id" does not apply to kind mpay; it is for oauth2 and airtel`}},
		{"duplicate field", "providers:" + daraja + "    consumer_key: again\n",
			[]string{`line 7: providers[0] (daraja-sandbox): field "consumer_key" is already set at line 5`}},
		{"list expected", "providers: {}\n", []string{"line 1: providers: want a list, not a mapping"}},
		{"mapping expected", "providers:" + daraja + "    headers: [x]\n", []string{"providers[0] (daraja-sandbox).headers: want a mapping, not a list"}},
		{"string expected", "providers:" + momo + "    auth_style: {a: b}\n", []string{"providers[0] (momo).auth_style: want a string, not a mapping"}},
		{"duration expected", "providers:" + momo + "    timeout: [1s]\n", []string{"providers[0] (momo).timeout: want a duration, not a list"}},
		{"number expected", "providers:" + mpay + "    pool: four\n", []string{"line 7: providers[0] (mpay).pool: want a whole number"}},
		{"duration without unit", "lease: {ttl: 10}\nproviders:" + daraja, []string{"line 1: lease.ttl: a number needs a unit, such as 10s or 5m"}},
		{"negative duration", "providers:" + daraja + "    refresh_before: -1m\n", []string{"providers[0] (daraja-sandbox).refresh_before: must not be negative"}},
		{"cooldown out of range", "providers:" + daraja + "    refresh_cooldown: 2h\n", []string{"providers[0] (daraja-sandbox).refresh_cooldown: must be from 0 (the default, 5s) to 1h"}},
		{"credentials limits", "credentials: {max_bytes: 1000, max_value_size: 10}\nproviders:" + daraja, []string{"credentials.max_bytes: must be at least 1048576", "credentials.max_value_size: must be from 1024 to 1048576"}},
		{"put rate", "credentials: {put_rate: -2}\nproviders:" + daraja, []string{"credentials.put_rate: must be from 1 to 1000000 providers a second, 0 for the default (2500) or -1 for no bound"}},
		{"put rate too high", "credentials: {put_rate: 2000000}\nproviders:" + daraja, []string{"credentials.put_rate: must be from 1 to 1000000"}},
		{"bad duration", "providers:" + daraja + "    timeout: soon\n", []string{"providers[0] (daraja-sandbox).timeout: want a duration such as 10s"}},

		// Values.
		{"no providers", "bucket: tokens\n", []string{"config: providers: at least one provider is required"}},
		{"bad provider name", "providers:" + strings.Replace(daraja, "daraja-sandbox", "Daraja_Sandbox", 1),
			[]string{`line 2: providers[0].name: "Daraja_Sandbox" is not a valid provider name: want [a-z0-9][a-z0-9-]*, at most 64 characters`}},
		{"bad provider name from the environment", "providers:" + strings.Replace(daraja, "daraja-sandbox", "${INJECT}", 1),
			[]string{"line 2: providers[0].name: not a valid provider name: want"}},
		{"missing provider name", "providers:" + strings.Replace(daraja, "name: daraja-sandbox", "name: ''", 1),
			[]string{"providers[0].name: missing or empty"}},
		{"duplicate provider name", "providers:" + daraja + mpay + daraja,
			[]string{"providers[2] (daraja-sandbox).name: duplicate: providers[0] has the same name"}},
		{"shared credential", "providers:" + daraja + mpay + strings.Replace(daraja, "name: daraja-sandbox", "name: daraja-again", 1),
			[]string{"providers[2] (daraja-again).consumer_key: shared: providers[0] (daraja-sandbox) uses the same credential"}},
		{"shared credential, endpoint spelled differently", "providers:" + daraja + strings.Replace(strings.Replace(daraja, "name: daraja-sandbox", "name: daraja-again", 1), "safaricom.co.ke", "SAFARICOM.co.ke/", 1),
			[]string{"providers[1] (daraja-again).consumer_key: shared: providers[0] (daraja-sandbox) uses the same credential"}},
		{"unknown kind", "providers:" + strings.Replace(daraja, "kind: daraja", "kind: darja", 1),
			[]string{`line 3: providers[0] (daraja-sandbox).kind: unknown kind "darja" (did you mean daraja?); want daraja, mpay, oauth2 or airtel`}},
		{"unknown kind, nothing near", "providers:" + strings.Replace(daraja, "kind: daraja", "kind: stripe", 1),
			[]string{`line 3: providers[0] (daraja-sandbox).kind: unknown kind "stripe"; want daraja, mpay, oauth2 or airtel`}},
		{"missing field at its provider's line", "bucket: tokens\nproviders:\n  - {name: d, kind: daraja, base_url: 'https://x', consumer_key: k}\n",
			[]string{"line 3: providers[0] (d).consumer_secret: missing or empty; kind daraja needs it"}},
		{"typo of a field of the kind", "providers:" + strings.Replace(daraja, "consumer_secret:", "consumer_secert:", 1),
			[]string{`providers[0] (daraja-sandbox): unknown field "consumer_secert"; did you mean consumer_secret?`}},
		{"typo of a nested field", "nats:\n  embeded: {}\nproviders:" + daraja, []string{`line 2: nats: unknown field "embeded"; did you mean embedded?`}},
		{"syntax error reported where it is", "nats:\n  url: x\nproviders:\n  - name: a\n    kind: daraja\n   bad: 1\n",
			[]string{"config: line 6: did not find expected '-' indicator"}},
		{"unclosed list reported where it is", "bucket: tokens\nproviders: [a, b\nhttp: {}\n", []string{"config: line 2: did not find expected ',' or ']'"}},
		{"missing kind", "providers:" + strings.Replace(daraja, "kind: daraja", "", 1),
			[]string{"providers[0] (daraja-sandbox).kind: missing or empty"}},
		{"daraja required", "providers:\n  - {name: d, kind: daraja}\n", []string{
			"providers[0] (d).base_url: missing or empty; kind daraja needs it",
			"providers[0] (d).consumer_key: missing or empty; kind daraja needs it",
			"providers[0] (d).consumer_secret: missing or empty; kind daraja needs it"}},
		{"mpay required", "providers:\n  - {name: m, kind: mpay}\n", []string{
			"providers[0] (m).base_url: missing", "providers[0] (m).username: missing", "providers[0] (m).password: missing"}},
		{"oauth2 required", "providers:\n  - {name: o, kind: oauth2}\n", []string{
			"providers[0] (o).token_url: missing", "providers[0] (o).client_id: missing", "providers[0] (o).client_secret: missing"}},
		{"airtel required", "providers:\n  - {name: a, kind: airtel}\n", []string{
			"providers[0] (a).base_url: missing", "providers[0] (a).client_id: missing", "providers[0] (a).client_secret: missing"}},
		{"relative base_url", "providers:" + strings.Replace(airtel, "https://openapiuat.airtel.africa", "/auth", 1),
			[]string{"providers[0] (airtel-ke).base_url: want an absolute http or https URL"}},
		{"non-http token_url", "providers:" + strings.Replace(momo, "https://", "ftp://", 1),
			[]string{"providers[0] (momo).token_url: want an absolute http or https URL"}},
		{"pool out of range", "providers:" + mpay + "    pool: 1001\n", []string{"providers[0] (mpay).pool: must be from 1 to 1000"}},
		{"bad auth_style", "providers:" + momo + "    auth_style: basic\n", []string{"providers[0] (momo).auth_style: want header or params"}},
		{"bad scope", "providers:" + momo + "    scopes: [read, 'a b']\n", []string{"providers[0] (momo).scopes[1]: want an OAuth2 scope"}},
		{"bad header name", "providers:" + momo + "    headers: {'Bad Name': x}\n", []string{`providers[0] (momo).headers: "Bad Name" is not a valid HTTP header name`}},
		{"bad header value", "providers:" + momo + "    headers: {X-Key: '${INJECT}'}\n",
			[]string{"providers[0] (momo).headers.X-Key: the value contains a control character"}},
		{"timeout out of range", "providers:" + airtel + "    timeout: 3m\n", []string{"providers[0] (airtel-ke).timeout: must be from 1s to 2m"}},
		{"bad bucket", "bucket: tokens.v2\nproviders:" + daraja, []string{"config: line 1: bucket: want a KV bucket name"}},
		{"short lease", "lease: {ttl: 500ms}\nproviders:" + daraja, []string{"config: line 1: lease.ttl: must be at least 1s"}},
		{"bad http listen", "http: {listen: 8080}\nproviders:" + daraja, []string{"config: line 1: http.listen: want host:port"}},
		{"bad port", "nats: {embedded: {listen: 'localhost:99999'}}\nproviders:" + daraja, []string{"config: line 1: nats.embedded.listen: want host:port"}},
		{"bad log", "log: {level: loud, format: xml}\nproviders:" + daraja,
			[]string{"config: line 1: log.level: want debug, info, warn or error", "config: line 1: log.format: want text or json"}},
		{"missing creds file", "nats: {creds: ./no-such.creds}\nproviders:" + daraja, []string{"config: line 1: nats.creds: cannot read the file"}},
		{"two ways to authenticate", "nats: {user: u, password: p, nkey_seed_file: config_test.go}\nproviders:" + daraja,
			[]string{"config: line 1: nats.nkey_seed_file: conflicts with nats.user: authenticate one way only"}},
		{"password without user", "nats: {password: '${MPAY_PASSWORD}'}\nproviders:" + daraja, []string{"config: line 1: nats.password: needs nats.user"}},
		{"user without password", "nats: {user: u}\nproviders:" + daraja, []string{"config: line 1: nats.password: missing or empty: nats.user needs a password"}},
		{"tls cert without key", "nats: {url: 'tls://h:4222', tls: {cert: config_test.go}}\nproviders:" + daraja,
			[]string{"config: line 1: nats.tls: cert and key go together"}},
		{"embedded settings with url", "nats: {url: 'nats://h:4222', embedded: {insecure: true}}\nproviders:" + daraja,
			[]string{"config: line 1: nats.embedded: config and insecure apply to the embedded server only"}},
		{"insecure not a bool", "nats: {embedded: {insecure: maybe}}\nproviders:" + daraja, []string{"config: line 1: nats.embedded.insecure: want true or false"}},
		{"bad cluster", "nats: {embedded: {cluster: {routes: [x]}}}\nproviders:" + daraja, []string{
			"config: line 1: nats.embedded.cluster.name: missing or empty", "config: line 1: nats.embedded.cluster.listen: want host:port",
			"config: line 1: nats.embedded.cluster.routes[0]: want a URL"}},

		// Secrets put where values are checked or shown.
		{"secrets in checked values", `
bucket: "${INJECT}"
http: {listen: "${MPESA_CONSUMER_SECRET}"}
log: {level: "${MOMO_KEY}"}
providers:
  - name: ${MPAY_PASSWORD}
    kind: ${MPESA_CONSUMER_SECRET}
  - {name: o, kind: oauth2, token_url: "${MOMO_KEY}", client_id: x, client_secret: y, auth_style: "${MOMO_KEY}", scopes: ["${INJECT}"]}
`, []string{"bucket:", "http.listen:", "log.level:", "providers[0].name:", "providers[0].kind:", "providers[1] (o).token_url:",
			"providers[1] (o).auth_style:", "providers[1] (o).scopes[0]:"}},
		{"secrets in typed values", `
lease: {ttl: "${MPAY_PASSWORD}"}
providers:
  - {name: m, kind: mpay, pool: "${MPAY_PASSWORD}", timeout: "${INJECT}", refresh_before: "-${MPAY_PASSWORD}"}
`, []string{"lease.ttl:", "providers[0] (m).pool:", "providers[0] (m).timeout:", "providers[0] (m).refresh_before:"}},
		{"literal secrets and problems elsewhere", "providers:" + strings.NewReplacer("${MPESA_CONSUMER_SECRET}", "cs-9Zr4-consumer-secret",
			"${MPESA_CONSUMER_KEY}", "${NOT_SET}").Replace(daraja) + "    bad: x\n",
			[]string{"environment variable NOT_SET is not set", `unknown field "bad"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), lookup)
			if err == nil {
				t.Fatalf("no error; got %+v", c)
			}
			if c != nil {
				t.Errorf("a Config with the error: %+v", c)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q:\n%s", w, msg)
				}
			}
			for line := range strings.Lines(msg) {
				if !strings.HasPrefix(line, "config: ") {
					t.Errorf("line %q does not start with \"config: \"", line)
				}
			}
			checkNoSecrets(t, msg)
		})
	}
}

func TestParseReportsAllInOrder(t *testing.T) {
	data := `
bucket: "tokens!"
lease: {ttl: 100ms}
providers:
  - {name: a, kind: daraja, base_url: "https://x", consumer_key: k}
  - {name: b, kind: mpay, base_url: "https://x", username: u, password: p, pool: 0}
  - {name: a, kind: airtel, base_url: "https://x", client_id: i, client_secret: "${EMPTY}"}
`
	want := `config: line 2: bucket: want a KV bucket name: letters, digits, _ and -
config: line 3: lease.ttl: must be at least 1s
config: line 5: providers[0] (a).consumer_secret: missing or empty; kind daraja needs it
config: line 7: providers[2] (a).client_secret: missing or empty; kind airtel needs it
config: line 7: providers[2] (a).name: duplicate: providers[0] has the same name`
	for range 3 {
		if _, err := Parse([]byte(data), lookup); err == nil || err.Error() != want {
			t.Fatalf("got\n%v\nwant\n%s", err, want)
		}
	}

	data = `
bucket: ${NOT_SET}
providers:
  - {name: a, kind: daraja, pool: 2, base_url: "${NOT_SET}"}
  - {name: b, kind: mpay, pool: x}
wat: 1
`
	want = `config: line 2: bucket: environment variable NOT_SET is not set
config: line 4: providers[0] (a).base_url: environment variable NOT_SET is not set
config: line 4: providers[0] (a): field "pool" does not apply to kind daraja; it is for mpay
config: line 5: providers[1] (b).pool: want a whole number
config: line 6: unknown field "wat"`
	if _, err := Parse([]byte(data), lookup); err == nil || err.Error() != want {
		t.Fatalf("got\n%v\nwant\n%s", err, want)
	}
}

func TestParseTooManyProblems(t *testing.T) {
	data := "providers:\n" + strings.Repeat("  - {name: x, kind: y}\n", 200)
	_, err := Parse([]byte(data), nil)
	if n := strings.Count(err.Error(), "\n") + 1; n != maxProblems+1 {
		t.Errorf("%d lines, want %d", n, maxProblems+1)
	}
	if !strings.HasSuffix(err.Error(), "config: more than 100 problems; fix these first") {
		t.Errorf("last line is not the limit: %v", err)
	}
}

func TestParseAliasBomb(t *testing.T) {
	data := "a: &a [" + strings.Repeat("x,", 1000) + "x]\n" +
		"providers:\n" + strings.Repeat("  - {name: o, kind: oauth2, scopes: *a}\n", 2000)
	_, err := Parse([]byte(data), nil)
	if err == nil || !strings.Contains(err.Error(), "too large once its aliases are expanded") {
		t.Errorf("got %v", err)
	}
}

func TestExpand(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		errs     []string
	}{
		{"plain", "plain", nil},
		{"${MPAY_USERNAME}", "mu-3Kd8-username", nil},
		{"a${MPAY_USERNAME}b${EMPTY}c", "amu-3Kd8-usernamebc", nil},
		{"$${MPAY_USERNAME}", "${MPAY_USERNAME}", nil},
		{"$$${MPAY_USERNAME}", "$${MPAY_USERNAME}", nil},
		{"$MPAY_USERNAME $$ $ {x} }", "$MPAY_USERNAME $$ $ {x} }", nil},
		{"${INJECT}", env["INJECT"], nil}, // its ${MPAY_PASSWORD} is not expanded again
		{"${A}-${B}", "", []string{"environment variable A is not set", "environment variable B is not set"}},
		{"${}", "", []string{`bad variable name in "${…}"`}},
		{"${1X}", "", []string{`bad variable name`}},
		{"${A B}", "", []string{`bad variable name`}},
		{"${_ok_1}${x", "", []string{"environment variable _ok_1 is not set", `unterminated "${"`}},
	} {
		got, errs := expand(tt.in, lookup)
		if len(errs) != len(tt.errs) {
			t.Errorf("expand(%q): errors %q, want %q", tt.in, errs, tt.errs)
			continue
		}
		for i := range errs {
			if !strings.HasPrefix(errs[i], tt.errs[i]) {
				t.Errorf("expand(%q): error %q, want %q…", tt.in, errs[i], tt.errs[i])
			}
		}
		if tt.errs == nil && got != tt.want {
			t.Errorf("expand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestExpandIsInjectionSafe shows that a value cannot change the document:
// it is expanded inside its scalar, once, whatever YAML it contains.
func TestExpandIsInjectionSafe(t *testing.T) {
	for _, quote := range []string{"", `"`, `'`} {
		data := "providers:" + strings.Replace(mpay, "${MPAY_PASSWORD}", quote+"${INJECT}"+quote, 1) +
			"    pool: 2\n" + "  - name: d\n    kind: daraja\n    base_url: https://x\n    consumer_key: \"a: b # c\"\n    consumer_secret: " + quote + "${INJECT}" + quote + "\n"
		c, err := Parse([]byte(data), lookup)
		if err != nil {
			t.Fatalf("quote %s: %v", quote, err)
		}
		m, d := c.Providers[0], c.Providers[1]
		if m.Password.Reveal() != env["INJECT"] || m.Pool != 2 || m.Kind != "mpay" || len(c.Providers) != 2 {
			t.Errorf("quote %s: mpay = %+v", quote, m)
		}
		if d.ConsumerSecret.Reveal() != env["INJECT"] || d.ConsumerKey != "a: b # c" {
			t.Errorf("quote %s: daraja = %+v", quote, d)
		}
	}
}

func TestDuration(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"10s", 10 * time.Second, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"250ms", 250 * time.Millisecond, ""},
		{"0", 0, ""},
		{"", 0, ""},
		{"10", 0, "a number needs a unit"},
		{"1.5", 0, "a number needs a unit"},
		{"-5s", 0, "must not be negative"},
		{"5 s", 0, "want a duration"},
		{"fortnight", 0, "want a duration"},
	} {
		var d Duration
		err := d.UnmarshalText([]byte(tt.in))
		switch {
		case tt.err == "" && (err != nil || d.D() != tt.want):
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", tt.in, d, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("UnmarshalText(%q): error %v, want %q", tt.in, err, tt.err)
		case err != nil && (!strings.HasPrefix(err.Error(), "config: invalid duration: ") || strings.Contains(err.Error(), "fortnight")):
			t.Errorf("UnmarshalText(%q): error %q has no prefix or shows the value", tt.in, err)
		}
	}
	if b, _ := Duration(90 * time.Second).MarshalText(); string(b) != "1m30s" {
		t.Errorf("MarshalText = %s", b)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	missing := filepath.Join(dir, "missing.yaml")
	if _, err := Load(missing, lookup); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}

	big := write("big.yaml", "providers:"+daraja+strings.Repeat("#", maxFileSize))
	if _, err := Load(big, lookup); err == nil || err.Error() != "config: "+big+": larger than 16 MiB" {
		t.Errorf("big file: %v", err)
	}
	exact := write("exact.yaml", "providers:"+daraja+strings.Repeat("#", maxFileSize-len("providers:"+daraja)))
	if _, err := Load(exact, lookup); err != nil {
		t.Errorf("16 MiB file: %v", err)
	}

	bad := write("bad.yaml", "providers:"+daraja+"    wat: 1\n")
	if _, err := Load(bad, lookup); err == nil || err.Error() != "config: "+bad+`:7: providers[0] (daraja-sandbox): unknown field "wat"` {
		t.Errorf("bad file: %v", err)
	}
	invalid := write("invalid.yaml", "bucket: a.b\nproviders:"+daraja)
	if _, err := Load(invalid, lookup); err == nil || err.Error() != "config: "+invalid+":1: bucket: want a KV bucket name: letters, digits, _ and -" {
		t.Errorf("invalid file: %v", err)
	}
	syntax := write("syntax.yaml", "bucket: tokens\n  providers: x\n")
	if _, err := Load(syntax, lookup); err == nil || !strings.HasPrefix(err.Error(), "config: "+syntax+":2: ") {
		t.Errorf("syntax error: %v", err)
	}
}

func TestValidate(t *testing.T) {
	c := Config{Providers: []Provider{
		{Name: "d", Kind: KindDaraja, BaseURL: "https://x", ConsumerKey: "k", ConsumerSecret: "s"},
		{Name: "o", Kind: KindOAuth2, TokenURL: "https://x/token", ClientID: "i", ClientSecret: "s", Scopes: []string{"a"}},
	}}
	if err := c.Validate(); err == nil {
		t.Error("no error without defaults")
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Providers[0].Pool = 3
	c.Providers[0].Scopes = []string{"a"}
	want := `config: providers[0] (d): field "pool" does not apply to kind daraja; it is for mpay
config: providers[0] (d): field "scopes" does not apply to kind daraja; it is for oauth2`
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

func TestFields(t *testing.T) {
	if got := (Provider{Kind: KindMPay}).Fields(); !reflect.DeepEqual(got, []string{"name", "kind", "refresh_before", "timeout", "refresh_cooldown", "base_url", "username", "password", "pool"}) {
		t.Errorf("mpay fields: %q", got)
	}
	if got := (Provider{Kind: "x"}).Fields(); got != nil {
		t.Errorf("unknown kind fields: %q", got)
	}
	// Every field of Provider belongs to some kind, and every name is a field.
	for f := range reflect.TypeFor[Provider]().Fields() {
		found := false
		for _, k := range kinds {
			found = found || slices.Contains((Provider{Kind: k}).Fields(), yamlName(f))
		}
		if !found {
			t.Errorf("field %s belongs to no kind", yamlName(f))
		}
	}
	for _, k := range kinds {
		for _, name := range (Provider{Kind: k}).Fields() {
			if _, ok := fieldByName(reflect.TypeFor[Provider](), name); !ok {
				t.Errorf("kind %s: no field %q", k, name)
			}
		}
	}
}

func TestLeaseTimingRatios(t *testing.T) {
	base := "providers:\n  - {name: d, kind: daraja, base_url: \"https://x\", consumer_key: k, consumer_secret: s}\n"
	for _, tc := range []struct{ lease, want string }{
		{"lease: {ttl: 10s, renew_deadline: 10s}\n", "lease.renew_deadline: must be less than lease.ttl"},
		{"lease: {ttl: 10s, renew_deadline: 5s, retry_period: 5s}\n", "lease.retry_period: must be positive and less than lease.renew_deadline"},
		{"nats: {replicas: 7}\n", "nats.replicas: must be 1 to 5"},
	} {
		_, err := Parse([]byte(tc.lease+base), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.lease, err, tc.want)
		}
	}
	c, err := Parse([]byte("nats: {embedded: {cluster: {name: c, listen: \"127.0.0.1:6222\"}}}\nlease: {ttl: 3s}\n"+base), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.NATS.Replicas != 3 || c.Lease.RenewDeadline.D() != 2*time.Second || c.Lease.RetryPeriod.D() != 600*time.Millisecond {
		t.Fatalf("defaults: replicas %d, renew %v, retry %v", c.NATS.Replicas, c.Lease.RenewDeadline, c.Lease.RetryPeriod)
	}
}

// TestPutsPerSecond: credentials.put_rate 0 is the default, -1 no bound.
func TestPutsPerSecond(t *testing.T) {
	for rate, want := range map[int]int{0: DefaultPutRate, -1: 0, 1: 1, 250: 250} {
		if got := (Credentials{PutRate: rate}).PutsPerSecond(); got != want {
			t.Errorf("put_rate %d: %d a second, want %d", rate, got, want)
		}
	}
}
