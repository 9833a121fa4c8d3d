package simulator

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func darajaGet(t *testing.T, url, key, secret string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+"/oauth/v1/generate?grant_type=client_credentials", nil)
	req.SetBasicAuth(key, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	s := b.String()
	if i := strings.Index(s, `"access_token":"`); i >= 0 {
		s = s[i+len(`"access_token":"`):]
		s = s[:strings.IndexByte(s, '"')]
	}
	return resp.StatusCode, s
}

func protected(t *testing.T, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/mpesa/stkpush/v1/processrequest", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Many Daraja credentials: each has its own one valid token and counters.
func TestManyCredentials(t *testing.T) {
	s := New(Config{})
	srv := httptest.NewServer(s)
	defer srv.Close()
	s.AddCredential(Daraja, "shop-1", "secret-1")

	st, tokA := darajaGet(t, srv.URL, "merchant-0001", DerivedSecret("merchant-0001"))
	if st != 200 {
		t.Fatalf("derived credential: %d", st)
	}
	st, tokB := darajaGet(t, srv.URL, "shop-1", "secret-1")
	if st != 200 {
		t.Fatalf("registered credential: %d", st)
	}
	if st, _ := darajaGet(t, srv.URL, "merchant-0001", "wrong"); st != 400 {
		t.Fatalf("wrong derived secret: %d", st)
	}
	// B's token did not kill A's (each credential has its own)…
	if protected(t, srv.URL, tokA) != 200 || protected(t, srv.URL, tokB) != 200 {
		t.Fatal("one credential's token invalidated another's")
	}
	// …but A's next token kills A's previous one.
	_, tokA2 := darajaGet(t, srv.URL, "merchant-0001", DerivedSecret("merchant-0001"))
	if protected(t, srv.URL, tokA) != 401 || protected(t, srv.URL, tokA2) != 200 || protected(t, srv.URL, tokB) != 200 {
		t.Fatal("a credential's new token must invalidate only its own previous one")
	}
	if cs := s.CredentialStats(Daraja, "merchant-0001"); cs.TokenRequests != 3 || cs.TokensIssued != 2 {
		t.Fatalf("merchant-0001 stats %+v", cs)
	}
	if cs := s.CredentialStats(Daraja, "shop-1"); cs.TokensIssued != 1 {
		t.Fatalf("shop-1 stats %+v", cs)
	}
	// The rule can be turned off.
	off := httptest.NewServer(New(Config{ManyPrefix: "-"}))
	defer off.Close()
	if st, _ := darajaGet(t, off.URL, "merchant-0001", DerivedSecret("merchant-0001")); st != 400 {
		t.Fatalf("rule off: %d", st)
	}
}

func TestInFlightPeak(t *testing.T) {
	s := New(Config{})
	s.SetFaults(Daraja, Faults{Latency: 50 * time.Millisecond})
	srv := httptest.NewServer(s)
	defer srv.Close()
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			id := "merchant-" + string(rune('a'+i))
			darajaGet(t, srv.URL, id, DerivedSecret(id))
		})
	}
	wg.Wait()
	if now, peak := s.InFlight(); now != 0 || peak < 2 || peak > 5 {
		t.Fatalf("in flight %d, peak %d", now, peak)
	}
	// Each of the 5 took its 50 ms of latency, and less than a second.
	if n, busy := s.Answered(); n != 5 || busy < 5*50*time.Millisecond || busy > 5*time.Second {
		t.Fatalf("answered %d in %v in all, want 5 in 250 ms to 5 s", n, busy)
	}
}
