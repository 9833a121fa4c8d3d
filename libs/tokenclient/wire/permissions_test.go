package wire

import "testing"

func TestIsInbox(t *testing.T) {
	for subj, want := range map[string]bool{
		"_INBOX.abc":              true,
		"_INBOX.abc.def":          true,
		"_INBOX_payments.abc":     true,
		"_INBOX_payments.abc.1":   true,
		"_INBOX.":                 false,
		"_INBOX":                  false,
		"_INBOX_.abc":             false,
		"_INBOXabc.x":             false,
		"_INBOX.*":                false,
		"_INBOX.>":                false,
		"_INBOX.a.*":              false,
		"_INBOX.a.>":              false,
		"_INBOX_*.a":              false,
		"_INBOX_>.a":              false,
		"_INBOX_payments.>":       false,
		"_INBOX..a":               false,
		"_INBOX.a..b":             false,
		"_INBOX.a b":              false,
		"$KV.tokens._lease":       false,
		"$JS.API.STREAM.DELETE.x": false,
		"":                        false,
	} {
		if got := IsInbox(subj); got != want {
			t.Errorf("IsInbox(%q) = %v, want %v", subj, got, want)
		}
	}
}

func TestValidUser(t *testing.T) {
	for user, want := range map[string]bool{
		"payments": true, "merchant-42": true, "svc_A1": true,
		"": false, "a.b": false, "a*": false, ">": false, "a b": false, `a"`: false, "a}": false,
		"a\n": false, "$SYS": false, string(make([]byte, 65)): false,
	} {
		if got := ValidUser(user); got != want {
			t.Errorf("ValidUser(%q) = %v, want %v", user, got, want)
		}
	}
}
