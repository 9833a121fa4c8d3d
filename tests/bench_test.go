package tests

import (
	"context"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/tests/harness"
)

// BenchmarkTokenWatched: Token on a real Client whose copy has loaded the
// token, i.e. the path a service takes, in each follow mode (compare with
// BenchmarkToken in libs/tokenclient, which measures the same read on a bare
// cache).
func BenchmarkTokenWatched(b *testing.B) {
	h := harness.Start(b, harness.Config{})
	for _, mode := range []tokenclient.FollowMode{tokenclient.FollowUpdates, tokenclient.FollowKVWatch} {
		tc, err := tokenclient.New(h.Connect(), tokenclient.WithBucket(h.Bucket), tokenclient.WithFollowMode(mode),
			tokenclient.WithProviders(h.Provider))
		if err != nil {
			b.Fatal(err)
		}
		if err := tc.WaitReady(context.Background()); err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.Run(mode.String()+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tc.Token(ctx, h.Provider); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(mode.String()+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := tc.Token(ctx, h.Provider); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
		_ = tc.Close()
	}
}

// BenchmarkTokenRequestReply: Token when the memory has nothing, i.e. a
// token.get request-reply to the refresher over loopback TCP, the server,
// the client and the refresher sharing the machine.
func BenchmarkTokenRequestReply(b *testing.B) {
	h := harness.Start(b, harness.Config{})
	tc := requestClient(b, h)
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := tc.Token(ctx, h.Provider); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tc.Token(ctx, h.Provider); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkCachedRead compares, in one run, Token on a real Client whose copy
// holds a valid token (FollowUpdates, the default) with the read a
// per-process token manager makes: golang.org/x/oauth2's
// ReuseTokenSource(...).Token() holding a valid token. Goal: tokenclient
// ≤ 50 ns/op, 0 allocs/op, and faster than ReuseTokenSource. Compare with
//
//	go test ./tests -run '^$' -bench CachedRead -count 6 > cached.txt
//	go run golang.org/x/perf/cmd/benchstat@latest -col /impl cached.txt
func BenchmarkCachedRead(b *testing.B) {
	h := harness.Start(b, harness.Config{})
	tc, err := tokenclient.New(h.Connect(), tokenclient.WithBucket(h.Bucket), tokenclient.WithProviders(h.Provider))
	if err != nil {
		b.Fatal(err)
	}
	defer tc.Close()
	ctx := context.Background()
	if err := tc.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	reuse := oauth2.ReuseTokenSource(&oauth2.Token{AccessToken: "access", TokenType: "Bearer",
		Expiry: time.Now().Add(time.Hour)}, nil)
	b.Run("impl=tokenclient", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if tok, err := tc.Token(ctx, h.Provider); err != nil || tok.AccessToken == "" {
				b.Fatal(tok, err)
			}
		}
	})
	b.Run("impl=oauth2-reuse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if tok, err := reuse.Token(); err != nil || tok.AccessToken == "" {
				b.Fatal(tok, err)
			}
		}
	})
}
