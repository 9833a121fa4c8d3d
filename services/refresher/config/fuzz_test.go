package config

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
)

// fuzzEnv is the environment of FuzzParse; secret marks the variables whose
// values must never appear in an error.
var fuzzEnv = map[string]struct {
	value  string
	secret bool
}{
	"MPESA_CONSUMER_KEY":    {"ck-7Hq2-consumer-key", true},
	"MPESA_CONSUMER_SECRET": {"cs-9Zr4-consumer-secret", true},
	"MPAY_USERNAME":         {"mu-3Kd8-username", true},
	"MPAY_PASSWORD":         {"mp\"5Wn1: password\n#", true},
	"MOMO_USER":             {"9f1c2e4a-Momo-user", true},
	"MOMO_KEY":              {"mk-2Lp6-momo-key", true},
	"MOMO_SUBSCRIPTION_KEY": {"sk-8Tb3 subscription", true},
	"AIRTEL_CLIENT_ID":      {"ai-4Vg7-client-id", true},
	"AIRTEL_CLIENT_SECRET":  {"${MPAY_PASSWORD}-As6", true},
	"EMPTY":                 {"", false},
	"NAME":                  {"momo", false},
	"LEVEL":                 {"debug", false},
	"TTL":                   {"10", false},
}

func fuzzLookup(name string) (string, bool) {
	v, ok := fuzzEnv[name]
	return v.value, ok
}

// FuzzParse checks that Parse never panics, that what it accepts is valid,
// and that its errors never show a secret variable's value (raw or quoted)
// unless the input itself holds that value.
func FuzzParse(f *testing.F) {
	spec, err := os.ReadFile("testdata/refresher.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(spec),
		"providers:" + daraja + mpay + momo + airtel,
		"providers:" + daraja + "    pool: ${MPAY_PASSWORD}\n    consumer_sekret: x\n",
		"bucket: ${MPAY_PASSWORD}\nlease: {ttl: ${TTL}}\nproviders: [{name: ${NAME}, kind: ${MOMO_KEY}, headers: {X: ${MPAY_PASSWORD}}}]\n",
		"providers:\n  - &p {name: a, kind: mpay, base_url: 'http://x', username: $${U}, password: ${MPAY_PASSWORD}}\n  - *p\n",
		"a: &a [x, *a]\n",
		"",
		"\t",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, fuzzLookup)
		if err == nil {
			if c == nil {
				t.Fatal("nil Config and nil error")
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse accepted a Config that Validate rejects: %v", err)
			}
			return
		}
		if c != nil {
			t.Fatal("a Config with an error")
		}
		msg := err.Error()
		for name, v := range fuzzEnv {
			if !v.secret || bytes.Contains(data, []byte(v.value)) {
				continue
			}
			q := strconv.Quote(v.value)
			if strings.Contains(msg, v.value) || strings.Contains(msg, q[1:len(q)-1]) {
				t.Fatalf("error shows the value of %s:\n%s", name, msg)
			}
		}
	})
}
