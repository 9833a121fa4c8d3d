package rpc

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// FuzzParseGet: any token.get body either parses (a duration within
// (0, wire.MaxMinValidity], or none) or is a bad request with one of a fixed
// set of messages, each naming the field, so none echoes the body.
func FuzzParseGet(f *testing.F) {
	for _, s := range []string{"", "{}", " ", `{"min_validity":"30s"}`, `{"min_validity":30}`, `{"min_validity":"-1s"}`,
		`{"min_validity":"999999h"}`, `{"min_validity":null}`, `{"other":1}`, `[]`, `{"min_validity":"1h0m0.5s","x":[1,2]}`} {
		f.Add([]byte(s))
	}
	// Every error is one of these messages: none can echo the body.
	known := map[string]bool{}
	for _, s := range []string{`[]`, `{"min_validity":30}`, `{"min_validity":"x"}`, `{"min_validity":"-1s"}`, `{"min_validity":"999h"}`} {
		_, err := parseGet([]byte(s))
		known[err.Error()] = true
	}
	if len(known) != 5 {
		f.Fatalf("want 5 distinct messages: %v", known)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseGet(b)
		if err != nil {
			if !errors.Is(err, refresher.ErrBadRequest) {
				t.Fatalf("%q: %v is not a bad request", b, err)
			}
			if msg := err.Error(); !known[msg] || !strings.Contains(msg, "min_validity") {
				t.Fatalf("%q: unexpected message %q", b, msg)
			}
			return
		}
		if d < 0 || d > wire.MaxMinValidity {
			t.Fatalf("%q: min_validity %v out of range", b, d)
		}
	})
}
