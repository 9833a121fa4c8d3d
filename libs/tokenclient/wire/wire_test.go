package wire

import (
	"encoding/json"
	"testing"
	"time"
)

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"daraja-sandbox": true, "mpay": true, "a": true, "0x": true,
		"": false, "-a": false, "A": false, "a.b": false, "a*": false, "a b": false, "a_b": false,
	} {
		if got := ValidName(name); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestTokenJSON(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	tok := Token{Provider: "daraja-sandbox", AccessToken: "abc", TokenType: "Bearer", IssuedAt: at, ExpiresAt: at.Add(3599 * time.Second)}
	b, err := json.Marshal(tok)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"provider":"daraja-sandbox","access_token":"abc","token_type":"Bearer","issued_at":"2026-11-22T10:00:00Z","expires_at":"2026-11-22T10:59:59Z"}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	if tok.Expired(at) || !tok.Expired(at.Add(3599*time.Second)) || !(Token{}).Expired(at) {
		t.Fatal("Expired boundaries wrong")
	}
}
