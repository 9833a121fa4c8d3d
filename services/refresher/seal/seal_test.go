package seal

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func newKey(t *testing.T, id string) (Key, string) {
	t.Helper()
	raw := make([]byte, KeySize)
	_, _ = rand.Read(raw)
	b64 := base64.StdEncoding.EncodeToString(raw)
	k, err := ParseKey(id, b64)
	if err != nil {
		t.Fatal(err)
	}
	return k, b64
}

func TestSealOpen(t *testing.T) {
	k2, _ := newKey(t, "k2")
	k1, _ := newKey(t, "k1")
	old, _ := NewKeyring(k1)
	ring, err := NewKeyring(k2, k1)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("consumer-secret-value")
	s, err := ring.Seal(secret, []byte("m-0001/consumer_secret"))
	if err != nil {
		t.Fatal(err)
	}
	if s.KeyID != "k2" || bytes.Contains(s.Box, secret) {
		t.Fatalf("sealed %+v", s)
	}
	s2, _ := ring.Seal(secret, []byte("m-0001/consumer_secret"))
	if bytes.Equal(s.Box, s2.Box) {
		t.Fatal("two seals of one value are equal: nonce reused")
	}
	got, err := ring.Open(s, []byte("m-0001/consumer_secret"))
	if err != nil || string(got) != string(secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Moved to another entry: refused.
	if _, err := ring.Open(s, []byte("m-0002/consumer_secret")); !errors.Is(err, ErrOpen) {
		t.Fatalf("moved ciphertext opened: %v", err)
	}
	// Sealed with the old key: opened, and stale.
	so, _ := old.Seal(secret, []byte("a"))
	if got, err := ring.Open(so, []byte("a")); err != nil || string(got) != string(secret) {
		t.Fatalf("old key: %q, %v", got, err)
	}
	if !ring.Stale(so) || ring.Stale(s) {
		t.Fatal("Stale wrong")
	}
	// Unknown key.
	if _, err := old.Open(s, []byte("m-0001/consumer_secret")); !errors.Is(err, ErrOpen) {
		t.Fatalf("unknown key: %v", err)
	}
	// Tampered.
	s.Box[len(s.Box)-1] ^= 1
	if _, err := ring.Open(s, []byte("m-0001/consumer_secret")); !errors.Is(err, ErrOpen) {
		t.Fatal("tampered value opened")
	}
}

func TestParseKeyErrorsNeverShowTheValue(t *testing.T) {
	for _, v := range []string{"not base64 !!!", base64.StdEncoding.EncodeToString([]byte("short-key-value"))} {
		_, err := ParseKey("k1", v)
		if err == nil || strings.Contains(err.Error(), v) {
			t.Fatalf("ParseKey(%q) = %v", v, err)
		}
	}
	if _, err := ParseKey("bad id!", base64.StdEncoding.EncodeToString(make([]byte, 32))); err == nil {
		t.Fatal("bad id accepted")
	}
	k, _ := newKey(t, "k1")
	if _, err := NewKeyring(k, k); err == nil {
		t.Fatal("duplicate id accepted")
	}
}
