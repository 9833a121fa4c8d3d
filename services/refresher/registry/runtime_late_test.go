package registry

import (
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// Issue 17, item 7: a removed provider's late token — published by its loop
// as it stopped, seen by this replica's watch after the removal — does not
// seed a later provider of the same name (it was fetched with the removed
// provider's credentials); a token issued after the removal does.
func TestRemovedProvidersLateTokenSeedsNoSuccessor(t *testing.T) {
	ps := New()
	runtimeProvider := func() *Served {
		return &Served{Name: "p", Kind: "daraja", Source: wire.SourceRuntime, Credential: "app-key",
			Manager: refresh.NewManager(refresh.Config{Name: "p", Kind: "daraja"})}
	}
	ps.Add(runtimeProvider())
	issued := time.Now().Add(-time.Second) // before the removal
	late := wire.Token{Provider: "p", AccessToken: "old-credentials", TokenType: "Bearer", IssuedAt: issued, ExpiresAt: issued.Add(time.Hour)}
	if ps.Remove("p") == nil {
		t.Fatal("remove found no runtime provider p")
	}
	ps.Token(late, 7) // the stopping loop's publish, seen after the removal

	next := runtimeProvider()
	ps.Add(next)
	if e := next.Manager.Slot().Load(); e != nil {
		t.Fatalf("a new provider p starts from %q, the removed provider's late token", e.Token.AccessToken)
	}

	// A token issued after the removal (the new provider's, published by
	// the leader before this replica loaded it) does seed it.
	ps.Remove("p")
	fresh := wire.Token{Provider: "p", AccessToken: "new-credentials", TokenType: "Bearer", IssuedAt: time.Now().Add(time.Second), ExpiresAt: time.Now().Add(time.Hour)}
	ps.Token(fresh, 9)
	again := runtimeProvider()
	ps.Add(again)
	if e := again.Manager.Slot().Load(); e == nil || e.Token.AccessToken != "new-credentials" {
		t.Fatalf("a token issued after the removal did not seed the new provider: %v", e)
	}
}
