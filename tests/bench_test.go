package tests

import (
	"context"
	"testing"

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
	tc, err := tokenclient.New(h.Connect(), tokenclient.WithoutWatch())
	if err != nil {
		b.Fatal(err)
	}
	defer tc.Close()
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
