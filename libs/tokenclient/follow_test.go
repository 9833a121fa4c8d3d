package tokenclient

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// newTestFollower returns a follower of provider "p" on a client without a
// connection; its updates and reads are applied by calling update and read.
func newTestFollower(t *testing.T) (*Client, *follower, *[]Event) {
	t.Helper()
	var events []Event
	c := newTestClient(t, nil, WithOnUpdate(func(ev Event) { events = append(events, ev) }))
	f := &follower{c: c, poke: make(chan struct{}, 1), p: map[string]*followed{"p": {confirmed: true}}}
	c.fol = f
	return c, f, &events
}

// updateMsg is a message of token.updates.p as the server republishes it.
func updateMsg(t *testing.T, seq, last uint64, access string) *nats.Msg {
	t.Helper()
	m := nats.NewMsg("token.updates.p")
	m.Header.Set(wire.HeaderSequence, fmt.Sprint(seq))
	m.Header.Set(wire.HeaderLastSequence, fmt.Sprint(last))
	if access == "" {
		m.Header.Set(wire.HeaderKVOperation, "DEL")
		return m
	}
	b, err := json.Marshal(testToken("p", access, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	m.Data = b
	return m
}

func held(c *Client) string {
	if e, ok := c.cache.get("p"); ok {
		return e.tok.AccessToken
	}
	return ""
}

// TestFollowOrdersBySequence walks the follower through the rules of SPEC
// §9: newer updates apply, older ones are ignored, a gap, a sequence that
// started over and a reset read each behave as documented.
func TestFollowOrdersBySequence(t *testing.T) {
	c, f, events := newTestFollower(t)
	st := f.p["p"]
	step := func(name string, fn func(), wantHeld string, wantSeq uint64, wantStale readKind) {
		t.Helper()
		fn()
		if got := held(c); got != wantHeld || st.seq != wantSeq || st.stale != wantStale {
			t.Fatalf("%s: held %q seq %d stale %d; want %q %d %d", name, got, st.seq, st.stale, wantHeld, wantSeq, wantStale)
		}
		st.stale = readNone
	}
	step("the first read", func() { f.read("p", testToken("p", "r5", time.Hour), 5, 0, readStrict) }, "r5", 5, readNone)
	step("the next update", func() { f.update("p", updateMsg(t, 7, 5, "u7")) }, "u7", 7, readNone)
	step("a duplicate", func() { f.update("p", updateMsg(t, 7, 5, "dup")) }, "u7", 7, readNone)
	step("an older update is ignored, and the value read again", func() { f.update("p", updateMsg(t, 6, 5, "old")) }, "u7", 7, readReset)
	step("a gap: the update applies, and the value is read again", func() { f.update("p", updateMsg(t, 12, 9, "u12")) }, "u12", 12, readStrict)
	step("a strict read older than the value held is ignored", func() { f.read("p", testToken("p", "r9", time.Hour), 9, st.gen, readStrict) }, "u12", 12, readNone)
	gen := st.gen
	f.update("p", updateMsg(t, 13, 12, "u13"))
	step("a reset read overtaken by an update is ignored", func() { f.read("p", testToken("p", "r3", time.Hour), 3, gen, readReset) }, "u13", 13, readNone)
	step("a reset read with nothing newer meanwhile applies (the bucket started over)", func() { f.read("p", testToken("p", "r3", time.Hour), 3, st.gen, readReset) }, "r3", 3, readNone)
	step("a reply without a revision (single-use) is not cached", func() { f.read("p", testToken("p", "once", time.Hour), 0, st.gen, readReset) }, "r3", 3, readNone)
	step("a delete stops serving the token", func() { f.update("p", updateMsg(t, 20, 3, "")) }, "", 20, readNone)
	step("the key's first write in a stream that started over applies", func() { f.update("p", updateMsg(t, 2, 0, "n2")) }, "n2", 2, readReset)
	step("a message without a sequence is not an update", func() {
		m := updateMsg(t, 30, 2, "bogus")
		m.Header.Del(wire.HeaderSequence)
		f.update("p", m)
	}, "n2", 2, readNone)

	var got []string
	for _, ev := range *events {
		if ev.Deleted {
			got = append(got, fmt.Sprintf("del@%d", ev.Revision))
			continue
		}
		got = append(got, fmt.Sprintf("%s@%d", ev.Token.AccessToken, ev.Revision))
	}
	want := "[r5@5 u7@7 u12@12 u13@13 r3@3 del@20 n2@2]"
	if fmt.Sprint(got) != want {
		t.Fatalf("events %v, want %s", got, want)
	}
}

// TestFollowUnknownProviderStopsServing: a read answered 404 (the provider
// was removed while updates were missed) drops the token, unless an update
// came in while the read was in flight.
func TestFollowUnknownProviderStopsServing(t *testing.T) {
	c, f, _ := newTestFollower(t)
	st := f.p["p"]
	f.update("p", updateMsg(t, 4, 0, "u4"))
	gen := st.gen
	f.update("p", updateMsg(t, 5, 4, "u5"))
	f.refused("p", &Error{Code: wire.CodeUnknownProvider}, gen)
	if held(c) != "u5" {
		t.Fatal("a 404 overtaken by an update dropped the token")
	}
	f.refused("p", &Error{Code: wire.CodeUnavailable}, st.gen)
	if held(c) != "u5" {
		t.Fatal("a 503 dropped the token")
	}
	f.refused("p", &Error{Code: wire.CodeUnknownProvider}, st.gen)
	if held(c) != "" {
		t.Fatal("a 404 did not drop the token")
	}
}

// TestFollowUnconfirmedNotCached: until the server is known to have taken
// the subscription, and never once it refused it, a read is not cached.
func TestFollowUnconfirmedNotCached(t *testing.T) {
	c, f, _ := newTestFollower(t)
	st := f.p["p"]
	st.confirmed = false
	f.read("p", testToken("p", "r5", time.Hour), 5, 0, readStrict)
	if held(c) != "" {
		t.Fatal("a read was cached before the subscription was confirmed")
	}
	st.denied = true
	f.update("p", updateMsg(t, 6, 5, "u6"))
	f.read("p", testToken("p", "r7", time.Hour), 7, st.gen, readReset)
	if held(c) != "" {
		t.Fatal("a provider whose subscription was refused was cached")
	}
}
