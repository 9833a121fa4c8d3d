package main

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
	ps := newProviderSet()
	runtimeProvider := func() *served {
		return &served{name: "p", kind: "daraja", source: wire.SourceRuntime, cred: "app-key",
			mgr: refresh.NewManager(refresh.Config{Name: "p", Kind: "daraja"})}
	}
	ps.add(runtimeProvider())
	issued := time.Now().Add(-time.Second) // before the removal
	late := wire.Token{Provider: "p", AccessToken: "old-credentials", TokenType: "Bearer", IssuedAt: issued, ExpiresAt: issued.Add(time.Hour)}
	if ps.remove("p") == nil {
		t.Fatal("remove found no runtime provider p")
	}
	ps.token(late, 7) // the stopping loop's publish, seen after the removal

	next := runtimeProvider()
	ps.add(next)
	if e := next.mgr.Slot().Load(); e != nil {
		t.Fatalf("a new provider p starts from %q, the removed provider's late token", e.Token.AccessToken)
	}

	// A token issued after the removal (the new provider's, published by
	// the leader before this replica loaded it) does seed it.
	ps.remove("p")
	fresh := wire.Token{Provider: "p", AccessToken: "new-credentials", TokenType: "Bearer", IssuedAt: time.Now().Add(time.Second), ExpiresAt: time.Now().Add(time.Hour)}
	ps.token(fresh, 9)
	again := runtimeProvider()
	ps.add(again)
	if e := again.mgr.Slot().Load(); e == nil || e.Token.AccessToken != "new-credentials" {
		t.Fatalf("a token issued after the removal did not seed the new provider: %v", e)
	}
}
