package config

import "testing"

// BenchmarkParseProvider is one runtime provider put's parse (docs/benchmarks.md).
func BenchmarkParseProvider(b *testing.B) {
	data := []byte(`{"name":"m-00001","kind":"daraja","base_url":"http://127.0.0.1:41234","consumer_key":"merchant-00001","consumer_secret":"sim-secret-merchant-00001"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseProvider(data); err != nil {
			b.Fatal(err)
		}
	}
}
