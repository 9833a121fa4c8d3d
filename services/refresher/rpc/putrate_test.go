package rpc_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// TestPutRate: with Config.PutRate, tokenbus.providers.put and put_many
// share one bound of providers stored per second: a full put_many (1000)
// has its turn at once, and a put or put_many that could not have its turn
// within the request timeout is answered 503 naming credentials.put_rate,
// storing nothing. Without PutRate nothing waits.
func TestPutRate(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	many := func(from, n int) []byte {
		raws := make([]json.RawMessage, n)
		for i := range raws {
			raws[i] = json.RawMessage(fmt.Sprintf(`{"name":"m-%d","kind":"daraja","base_url":"https://example.com","consumer_key":"k-%d","consumer_secret":"s"}`, from+i, from+i))
		}
		b, _ := json.Marshal(wire.ProviderPutManyRequest{Providers: raws})
		return b
	}
	one := []byte(`{"name":"m-one","kind":"daraja","base_url":"https://example.com","consumer_key":"k-one","consumer_secret":"s"}`)
	for _, bound := range []int{1, 0} {
		svc, err := rpc.Start(nc, rpc.Config{Registry: quickRegistry{}, PutRate: bound, Timeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := nc.Request(wire.ProvidersPutManySubject, many(0, wire.ProvidersPutManyMax), 5*time.Second)
		var r wire.ProviderPutManyReply
		if err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" || json.Unmarshal(msg.Data, &r) != nil || r.Stored != wire.ProvidersPutManyMax {
			t.Fatalf("bound %d: a full put_many: %v %v", bound, err, msg)
		}
		for subj, body := range map[string][]byte{wire.ProvidersPutSubject: one, wire.ProvidersPutManySubject: many(2000, 2)} {
			msg, err := nc.Request(subj, body, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			code, m := msg.Header.Get(wire.HeaderErrorCode), msg.Header.Get(wire.HeaderError)
			switch {
			case bound > 0 && (code != "503" || !strings.Contains(m, "credentials.put_rate") || !strings.Contains(m, "1 providers a second")):
				t.Fatalf("%s past the bound: %s %q", subj, code, m)
			case bound == 0 && code != "":
				t.Fatalf("%s without a bound: %s %q", subj, code, m)
			}
		}
		if err := svc.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}
