package registry

import (
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
)

// full returns a provider with every field set.
func full() config.Provider {
	return config.Provider{
		Name: "m-1", Kind: config.KindOAuth2, BaseURL: "https://a.example", ConsumerKey: "ck", ConsumerSecret: "cs",
		Username: "u", Password: "pw", Pool: 4, TokenURL: "https://a.example/token", ClientID: "id", ClientSecret: "secret",
		AuthStyle: "header", Scopes: []string{"a", "b"}, Headers: map[string]refresher.Secret{"X-Key": "v", "X-Other": "w"},
		RefreshBefore: config.Duration(time.Minute), Timeout: config.Duration(5 * time.Second), RefreshCooldown: config.Duration(time.Second),
	}
}

// TestFingerprintIsDeepEqual: two entries have the same fingerprint exactly
// when reflect.DeepEqual (the comparison it replaces) finds them equal —
// a change of any one field, present or added later to config.Provider
// (each is changed by reflection), changes it; so do a nil and an empty
// Scopes or Headers, and a moved boundary between two fields; a deep copy,
// its map built in another order, does not.
func TestFingerprintIsDeepEqual(t *testing.T) {
	base := full()
	check := func(what string, a, b config.Provider) {
		t.Helper()
		if eq, same := reflect.DeepEqual(a, b), FingerprintOf(a) == FingerprintOf(b); eq != same {
			t.Errorf("%s: DeepEqual %v, same fingerprint %v", what, eq, same)
		}
	}
	cp := base
	cp.Scopes = slices.Clone(base.Scopes)
	cp.Headers = map[string]refresher.Secret{"X-Other": "w"}
	cp.Headers["X-Key"] = "v"
	check("a deep copy", base, cp)

	typ := reflect.TypeFor[config.Provider]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		p := base
		p.Scopes, p.Headers = slices.Clone(base.Scopes), maps.Clone(base.Headers)
		v := reflect.ValueOf(&p).Elem().Field(i)
		switch v.Kind() {
		case reflect.String:
			v.SetString(v.String() + "x")
		case reflect.Int, reflect.Int64:
			v.SetInt(v.Int() + 1)
		case reflect.Slice:
			v.Set(reflect.Append(v, reflect.ValueOf("c")))
		case reflect.Map:
			v.SetMapIndex(reflect.ValueOf("X-New"), reflect.ValueOf(refresher.Secret("n")))
		default:
			t.Fatalf("config.Provider.%s: a %v field FingerprintOf may not cover: extend it and this test", f.Name, v.Kind())
		}
		check("changed "+f.Name, base, p)
		if reflect.DeepEqual(base, p) {
			t.Fatalf("changing %s changed nothing", f.Name)
		}
	}

	for _, c := range []struct {
		what string
		a, b func(*config.Provider)
	}{
		{"nil and empty scopes", func(p *config.Provider) { p.Scopes = nil }, func(p *config.Provider) { p.Scopes = []string{} }},
		{"nil and empty headers", func(p *config.Provider) { p.Headers = nil }, func(p *config.Provider) { p.Headers = map[string]refresher.Secret{} }},
		{"a header value changed", func(*config.Provider) {}, func(p *config.Provider) { p.Headers = map[string]refresher.Secret{"X-Key": "V", "X-Other": "w"} }},
		{"a header renamed", func(*config.Provider) {}, func(p *config.Provider) { p.Headers = map[string]refresher.Secret{"X-Kez": "v", "X-Other": "w"} }},
		{"a boundary between fields moved", func(p *config.Provider) { p.BaseURL, p.ConsumerKey = "ab", "c" }, func(p *config.Provider) { p.BaseURL, p.ConsumerKey = "a", "bc" }},
		{"a boundary between scopes moved", func(p *config.Provider) { p.Scopes = []string{"a", "b"} }, func(p *config.Provider) { p.Scopes = []string{"ab"} }},
		{"a boundary between a header's name and value moved", func(p *config.Provider) { p.Headers = map[string]refresher.Secret{"ab": "c"} }, func(p *config.Provider) { p.Headers = map[string]refresher.Secret{"a": "bc"} }},
		{"scopes reordered", func(*config.Provider) {}, func(p *config.Provider) { p.Scopes = []string{"b", "a"} }},
		{"the zero provider", func(p *config.Provider) { *p = config.Provider{} }, func(*config.Provider) {}},
	} {
		a, b := full(), full()
		c.a(&a)
		c.b(&b)
		check(c.what, a, b)
	}
}

// TestServedKeepsNoEntry: a runtime provider is kept in 168 bytes (176
// with the allocator's size class), not the 376 it took with a copy of its
// config.Provider entry (384: 20 MB more with 100,000 providers).
func TestServedKeepsNoEntry(t *testing.T) {
	if n := unsafe.Sizeof(Served{}); n > 168 {
		t.Fatalf("registry.Served is %d bytes, want at most 168 (config.Provider alone is %d)", n, unsafe.Sizeof(config.Provider{}))
	}
}
