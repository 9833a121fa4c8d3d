package main

import (
	"slices"
	"testing"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// TestStaleRuntimeFollowsEveryChange checks the count the re-sealer's tick
// reads instead of scanning every provider: through adds, replacements,
// re-seals and removals, staleRuntime returns exactly the runtime providers
// sealed with an older key.
func TestStaleRuntimeFollowsEveryChange(t *testing.T) {
	ps := newProviderSet()
	rt := func(name string, stale bool) *served {
		return &served{name: name, source: wire.SourceRuntime, stale: stale}
	}
	want := func(names ...string) {
		t.Helper()
		var got []string
		for _, sv := range ps.staleRuntime() {
			got = append(got, sv.name)
		}
		if !slices.Equal(got, names) {
			t.Fatalf("staleRuntime = %v, want %v", got, names)
		}
	}
	a, b := rt("a", true), rt("b", false)
	ps.add(a)
	ps.add(b)
	want("a")
	ps.sealed(a, 2, false) // re-sealed
	want()
	ps.sealed(b, 3, true) // a watch that started over on an old entry
	want("b")
	ps.add(rt("b", false)) // replaced by a fresh put
	want()
	ps.add(rt("c", true))
	ps.sealed(a, 4, true)
	want("a", "c")
	ps.remove("c")
	want("a")
	ps.sealed(rt("a", false), 5, false) // not the served one: no change
	want("a")
	ps.remove("a")
	want()
	if ps.stale != 0 {
		t.Fatalf("stale count %d after every provider left", ps.stale)
	}
}
