package tokenclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// fastRetry is the first delay before rebuilding a watch that broke (after a
// reconnect, or when its channel closed); it doubles up to the watch retry
// interval, so the copy is current again soon after JetStream answers.
const fastRetry = 50 * time.Millisecond

// watch keeps the client's cache current from the bucket. It runs on one
// goroutine; nothing in it is shared except through the cache.
type watch struct {
	c       *Client
	js      jetstream.JetStream
	status  chan nats.Status
	kw      jetstream.KeyWatcher
	updates <-chan jetstream.KeyValueEntry
	// kwCancel ends kw's context, which bounds its subscription's life.
	kwCancel context.CancelFunc
	lastRev  uint64
	// created is when the bucket's stream was created, as last seen.
	created time.Time
}

func newWatch(c *Client) (*watch, error) {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return nil, fmt.Errorf("tokenclient: jetstream: %w", err)
	}
	w := &watch{c: c, js: js}
	// A listener of our own: the caller's handlers on nc stay untouched.
	w.status = c.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	return w, nil
}

// run sets the watch up, applies what it delivers, and rebuilds it from the
// last revision seen whenever the connection comes back or the watch's
// channel closes, until the client is closed.
func (w *watch) run() {
	defer close(w.c.done)
	defer w.c.nc.RemoveStatusListener(w.status)
	defer w.stopWatcher()

	timer := time.NewTimer(0)
	defer timer.Stop()
	fails, fast := 0, false
	rebuild := func() {
		w.stopWatcher()
		fails, fast = 0, true
		timer.Reset(0)
	}
	for {
		select {
		case <-w.c.stop:
			return
		case s := <-w.status:
			if s == nats.CLOSED {
				w.stopWatcher()
				timer.Stop()
				continue
			}
			rebuild() // reconnected: do not trust the old watcher (nats.go#1777)
		case <-timer.C:
			if w.c.nc.IsClosed() {
				continue
			}
			if err := w.start(); err != nil {
				if err != errNotConnected && w.c.bg.Err() == nil {
					w.c.report(err)
				}
				fails++
				d := w.c.o.watchRetry
				if fast {
					d = min(fastRetry<<min(fails-1, 16), d)
				}
				timer.Reset(d)
				continue
			}
			fails, fast = 0, false
			w.c.clearReport()
		case e, ok := <-w.updates:
			if !ok {
				w.kwCancel()
				w.kw, w.updates, w.kwCancel = nil, nil, nil
				rebuild()
				continue
			}
			w.apply(e)
		}
	}
}

// errNotConnected: the watch waits for the connection to come back.
var errNotConnected = errors.New("tokenclient: not connected")

// start opens the bucket and watches it from the revision after the last one
// seen (or from each key's latest value the first time).
func (w *watch) start() error {
	if !w.c.nc.IsConnected() {
		// A request now would wait for the reconnect and then its timeout;
		// the reconnect itself triggers the next attempt.
		return errNotConnected
	}
	ctx, cancel := context.WithTimeout(w.c.bg, w.c.o.timeout)
	defer cancel()
	kv, err := w.js.KeyValue(ctx, w.c.o.bucket)
	if err != nil {
		return fmt.Errorf("tokenclient: watch bucket %q: %w", w.c.o.bucket, err)
	}
	if st, err := kv.Status(ctx); err == nil {
		if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
			info := bs.StreamInfo()
			if w.lastRev > 0 && (!info.Created.Equal(w.created) || info.State.LastSeq < w.lastRev) {
				// The bucket was deleted and created again (or the server
				// lost its store): its revisions start over, and so do we.
				w.lastRev = 0
				w.c.cache.clear()
			}
			w.created = info.Created
		}
	}
	var opts []jetstream.WatchOpt
	if w.lastRev > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(w.lastRev+1))
	}
	// The watcher's subscription lives as long as the context it was
	// created with, so that context must outlive this call: it is cancelled
	// when the watcher is stopped, or here if creating it takes too long.
	kwCtx, kwCancel := context.WithCancel(w.c.bg)
	slow := time.AfterFunc(w.c.o.timeout, kwCancel)
	kw, err := kv.WatchAll(kwCtx, opts...)
	slow.Stop()
	if err != nil {
		kwCancel()
		return fmt.Errorf("tokenclient: watch bucket %q: %w", w.c.o.bucket, err)
	}
	w.kw, w.updates, w.kwCancel = kw, kw.Updates(), kwCancel
	return nil
}

// stopWatcher stops the current watcher and drains its channel until it
// closes, so that its delivery goroutine never blocks on a full channel.
func (w *watch) stopWatcher() {
	if w.kw == nil {
		return
	}
	_ = w.kw.Stop()
	w.kwCancel()
	ch := w.updates
	w.c.wg.Add(1)
	go func() {
		defer w.c.wg.Done()
		for range ch {
		}
	}()
	w.kw, w.updates, w.kwCancel = nil, nil, nil
}

// apply puts one watched change into the cache. Keys that are not provider
// names and values that are not tokens are skipped; single-use providers are
// not cached.
func (w *watch) apply(e jetstream.KeyValueEntry) {
	if e == nil { // every current value has been delivered
		w.c.markReady()
		return
	}
	rev, key := e.Revision(), e.Key()
	w.lastRev = max(w.lastRev, rev)
	// Keys that are not provider names are the refresher's own (the leader
	// term record, "_term"; the lease lives in its own bucket).
	if !wire.ValidName(key) || w.c.o.singleUse[key] {
		return
	}
	ev := Event{Provider: key, Revision: rev}
	switch e.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		w.c.cache.remove(key, rev)
		ev.Deleted = true
	default:
		if err := json.Unmarshal(e.Value(), &ev.Token); err != nil || ev.Token.AccessToken == "" ||
			(ev.Token.Provider != "" && ev.Token.Provider != key) {
			return
		}
		if !w.c.cache.put(key, ev.Token, rev) {
			return
		}
	}
	w.c.emit(ev)
}
