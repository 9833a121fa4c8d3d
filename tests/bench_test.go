package tests

import (
	"context"
	"testing"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/tests/harness"
)

// BenchmarkTokenWatched: Token on a real Client whose watch has loaded the
// bucket, i.e. the path a service takes (compare with BenchmarkToken in
// libs/tokenclient, which measures the same read on a bare cache).
func BenchmarkTokenWatched(b *testing.B) {
	h := harness.Start(b, harness.Config{})
	tc, err := tokenclient.New(h.Connect(), tokenclient.WithBucket(h.Bucket))
	if err != nil {
		b.Fatal(err)
	}
	defer tc.Close()
	if err := tc.WaitReady(context.Background()); err != nil {
		b.Fatal(err)
	}
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
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tc.Token(ctx, h.Provider); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
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
