package httpx

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestFlexSeconds(t *testing.T) {
	for in, want := range map[string]int64{`3599`: 3599, `"3599"`: 3599, `" 180 "`: 180, `3599.0`: 3599, `"\u0033599"`: 3599, `"3599.0"`: 3599} {
		var f FlexSeconds
		if err := json.Unmarshal([]byte(in), &f); err != nil || !f.Set || f.Value != want {
			t.Errorf("%s: got %+v, %v", in, f, err)
		}
	}
	for _, in := range []string{`"abc"`, `"3599s"`, `1.5`, `true`, `{}`, `"35\"99"`, `""`, `" "`} {
		var f FlexSeconds
		if err := json.Unmarshal([]byte(in), &f); err == nil {
			t.Errorf("%s: accepted as %+v", in, f)
		}
	}
	var f FlexSeconds
	if err := json.Unmarshal([]byte(`null`), &f); err != nil || f.Set {
		t.Errorf("null: %+v %v", f, err)
	}
}

func TestLifetimeBounds(t *testing.T) {
	r := &Response{Status: 200}
	if d, err := r.Lifetime(FlexSeconds{Set: true, Value: 3599}); err != nil || d != 3599*time.Second {
		t.Fatal(d, err)
	}
	for _, f := range []FlexSeconds{{}, {Set: true, Value: 0}, {Set: true, Value: -1}, {Set: true, Value: 1 << 40}} {
		if _, err := r.Lifetime(f); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
}

// FuzzFlexSeconds: any input either decodes to a whole number or errors,
// never panics, and an error never echoes the input.
func FuzzFlexSeconds(f *testing.F) {
	for _, s := range []string{`3599`, `"3599"`, `"abc"`, `null`, `1e3`, `"` + strings.Repeat("9", 100) + `"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fs FlexSeconds
		err := fs.UnmarshalJSON(b)
		if err != nil && err != errNotSeconds && len(b) > 8 && strings.Contains(err.Error(), string(b[1:len(b)-1])) {
			t.Fatalf("error echoes the input: %q", err)
		}
		// A JSON string decodes as its decoded text does as a number:
		// reading it between its quotes is only a shortcut.
		var text string
		if !strings.HasPrefix(strings.TrimSpace(string(b)), `"`) || json.Unmarshal(b, &text) != nil {
			return
		}
		var want FlexSeconds
		werr := want.UnmarshalJSON([]byte(strings.TrimSpace(text)))
		if strings.TrimSpace(text) == "null" || strings.HasPrefix(strings.TrimSpace(text), `"`) {
			return // not a number as text either way
		}
		if (err == nil) != (werr == nil) || fs != want {
			t.Fatalf("%q: got %+v, %v; its text %q gives %+v, %v", b, fs, err, text, want, werr)
		}
	})
}

// BenchmarkFlexSeconds decodes Daraja's expires_in, a quoted number, as the
// decoder of every Daraja answer does.
func BenchmarkFlexSeconds(b *testing.B) {
	in := []byte(`"3599"`)
	b.ReportAllocs()
	for b.Loop() {
		var f FlexSeconds
		if err := f.UnmarshalJSON(in); err != nil || f.Value != 3599 {
			b.Fatal(f, err)
		}
	}
}
