package refresh

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// countingPublisher publishes nowhere and counts.
type countingPublisher struct{ n atomic.Int64 }

func (p *countingPublisher) Publish(context.Context, wire.Token) (uint64, error) {
	return uint64(p.n.Add(1)), nil
}

// BenchmarkSchedulerFill is what the scheduler adds to each first fetch of
// a fill: b.N managers with no token started on one scheduler (64 workers,
// as cmd/refresher runs 16 slots), each provider call decoding a Daraja
// answer (so a turn's stack is as deep as a real one's), every token
// published; ns/op is per provider, from the starts to the last publish.
//
//	go test ./services/refresher/refresh -run '^$' -bench SchedulerFill -benchmem -count 6
func BenchmarkSchedulerFill(b *testing.B) {
	answer := []byte(`{"access_token":"c9SQxWWhmdVRlyh0zh8gZDTkubVF","expires_in":"3599"}`)
	prov := refresher.ProviderFunc(func(context.Context) (refresher.Token, error) {
		var s struct {
			AccessToken string            `json:"access_token"`
			ExpiresIn   httpx.FlexSeconds `json:"expires_in"`
		}
		if err := json.Unmarshal(answer, &s); err != nil {
			return refresher.Token{}, err
		}
		now := time.Now()
		return refresher.Token{AccessToken: refresher.Secret(s.AccessToken), TokenType: "Bearer", IssuedAt: now,
			ExpiresAt: now.Add(time.Duration(s.ExpiresIn.Value) * time.Second)}, nil
	})
	pub := &countingPublisher{}
	s := NewScheduler(SchedulerConfig{Logger: slog.New(slog.DiscardHandler), Publisher: pub, Workers: 64})
	ms := make([]*Manager, b.N)
	for i := range ms {
		name := fmt.Sprint("m-", i)
		ms[i] = s.NewManager(ProviderConfig{Name: name, Kind: "daraja", Provider: prov, Credential: name})
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for _, m := range ms {
		m.Start(ctx)
	}
	for pub.n.Load() < int64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	for _, m := range ms {
		m.Stop()
	}
}
