package registry

import (
	"slices"
	"testing"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// TestStaleRuntimeFollowsEveryChange checks the count the re-sealer's tick
// reads instead of scanning every provider: through adds, replacements,
// re-seals and removals, StaleRuntime returns exactly the runtime providers
// sealed with an older key.
func TestStaleRuntimeFollowsEveryChange(t *testing.T) {
	ps := New()
	rt := func(name string, stale bool) *Served {
		return &Served{Name: name, Source: wire.SourceRuntime, Stale: stale}
	}
	want := func(names ...string) {
		t.Helper()
		var got []string
		for _, sv := range ps.StaleRuntime() {
			got = append(got, sv.Name)
		}
		if !slices.Equal(got, names) {
			t.Fatalf("StaleRuntime = %v, want %v", got, names)
		}
	}
	a, b := rt("a", true), rt("b", false)
	ps.Add(a)
	ps.Add(b)
	want("a")
	ps.Sealed(a, 2, false) // re-sealed
	want()
	ps.Sealed(b, 3, true) // a watch that started over on an old entry
	want("b")
	ps.Add(rt("b", false)) // replaced by a fresh put
	want()
	ps.Add(rt("c", true))
	ps.Sealed(a, 4, true)
	want("a", "c")
	ps.Remove("c")
	want("a")
	ps.Sealed(rt("a", false), 5, false) // not the Served one: no change
	want("a")
	ps.Remove("a")
	want()
	if ps.stale != 0 {
		t.Fatalf("stale count %d after every provider left", ps.stale)
	}
}
