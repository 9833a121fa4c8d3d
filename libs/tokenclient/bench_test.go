package tokenclient

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkToken measures Token answering from the in-memory copy (the
// watch's cache), alone and from every P at once, with a few providers
// cached. Target: ≤ 50 ns/op and 0 allocs/op. The request-reply fallback is
// measured against a real refresher in the tests module
// (BenchmarkTokenRequestReply).
func BenchmarkToken(b *testing.B) {
	c, err := newClient(nil, []Option{WithoutWatch()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.bgCancel()
	for i := range 8 {
		name := fmt.Sprint("provider-", i)
		c.cache.put(name, testToken(name, "token-"+name, time.Hour), uint64(i+1))
	}
	c.cache.put("daraja-sandbox", testToken("daraja-sandbox", "access", time.Hour), 100)
	ctx := context.Background()

	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if tok, err := c.Token(ctx, "daraja-sandbox"); err != nil || tok.AccessToken == "" {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if tok, err := c.Token(ctx, "daraja-sandbox"); err != nil || tok.AccessToken == "" {
					b.Fatal(err)
				}
			}
		})
	})
}
