package sim

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/services/refresher/leader"
)

// bus is the simulated NATS of forwarded refreshes (leader.Transport): a
// queue group delivers each request to one member, drawn from the seed; a
// subscription with no queue gets every request.
type bus struct {
	w *world

	mu      sync.Mutex
	subs    []*busSub // in subscription order
	inboxes map[string]chan *nats.Msg
	n       int
}

func newBus(w *world) *bus { return &bus{w: w, inboxes: map[string]chan *nats.Msg{}} }

type busSub struct {
	b       *bus
	r       *replica
	subject string // a subject, or a prefix ending in ".*"
	queue   string
	h       nats.MsgHandler
}

func (s *busSub) Unsubscribe() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	for i, o := range s.b.subs {
		if o == s {
			s.b.subs = append(s.b.subs[:i], s.b.subs[i+1:]...)
			break
		}
	}
	return nil
}

func (s *busSub) matches(subject string) bool {
	if p, ok := strings.CutSuffix(s.subject, "*"); ok {
		return strings.HasPrefix(subject, p) && !strings.Contains(subject[len(p):], ".")
	}
	return s.subject == subject
}

// transport is the bus as replica r reaches it.
func (b *bus) transport(r *replica) leader.Transport { return busTransport{b: b, r: r} }

type busTransport struct {
	b *bus
	r *replica
}

func (t busTransport) QueueSubscribe(subject, queue string, h nats.MsgHandler) (leader.Subscription, error) {
	s := &busSub{b: t.b, r: t.r, subject: subject, queue: queue, h: h}
	t.b.mu.Lock()
	t.b.subs = append(t.b.subs, s)
	t.b.mu.Unlock()
	return s, nil
}

// RequestMsgWithContext delivers msg (to one member of each queue group, to
// every plain subscriber) and waits for the first reply.
func (t busTransport) RequestMsgWithContext(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
	b, w := t.b, t.b.w
	b.mu.Lock()
	b.n++
	inbox := fmt.Sprintf("_INBOX.%d", b.n)
	reply := make(chan *nats.Msg, 1)
	b.inboxes[inbox] = reply
	groups := map[string][]*busSub{}
	var order []string
	var to []*busSub
	for _, s := range b.subs {
		if !s.matches(msg.Subject) {
			continue
		}
		if s.queue == "" {
			to = append(to, s)
			continue
		}
		if groups[s.queue] == nil {
			order = append(order, s.queue)
		}
		groups[s.queue] = append(groups[s.queue], s)
	}
	if len(order) > 0 {
		w.mu.Lock()
		for _, q := range order {
			to = append(to, groups[q][w.source("bus", q).IntN(len(groups[q]))])
		}
		w.mu.Unlock()
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.inboxes, inbox)
		b.mu.Unlock()
	}()
	if len(to) == 0 {
		return nil, nats.ErrNoResponders
	}
	if len(to) > 1 {
		var names []string
		for _, s := range to {
			names = append(names, s.r.name)
		}
		w.violate(invForwardOnce, "a forwarded refresh of %s was delivered to %v", msg.Subject, names)
	}
	for _, s := range to {
		m := &nats.Msg{Subject: msg.Subject, Reply: inbox, Header: msg.Header, Data: msg.Data}
		go s.h(m)
	}
	select {
	case m := <-reply:
		return m, nil
	case <-ctx.Done():
		return nil, nats.ErrTimeout
	}
}

// PublishMsg delivers a reply to its requester, if it still waits.
func (t busTransport) PublishMsg(msg *nats.Msg) error {
	t.b.mu.Lock()
	ch := t.b.inboxes[msg.Subject]
	t.b.mu.Unlock()
	if ch != nil {
		select {
		case ch <- msg:
		default: // a reply already came
		}
	}
	return nil
}
