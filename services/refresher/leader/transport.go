package leader

import (
	"context"

	"github.com/nats-io/nats.go"
)

// Transport carries refreshes forwarded from standbys to the leader
// (Config.Transport). NATS over Config.Conn unless set: the simulation
// (services/refresher/sim) passes its own, and tests pass one that fails.
type Transport interface {
	// QueueSubscribe delivers each message on subject to one member of
	// queue, until the subscription is ended.
	QueueSubscribe(subject, queue string, handler nats.MsgHandler) (Subscription, error)
	// RequestMsgWithContext sends msg and waits for its reply.
	RequestMsgWithContext(ctx context.Context, msg *nats.Msg) (*nats.Msg, error)
	// PublishMsg sends msg (a reply).
	PublishMsg(msg *nats.Msg) error
}

// Subscription is an open Transport subscription.
type Subscription interface {
	Unsubscribe() error
}

// natsTransport is Transport over a NATS connection.
type natsTransport struct{ nc *nats.Conn }

func (t natsTransport) QueueSubscribe(subject, queue string, handler nats.MsgHandler) (Subscription, error) {
	sub, err := t.nc.QueueSubscribe(subject, queue, handler)
	if err != nil {
		return nil, err
	}
	return sub, nil
}

func (t natsTransport) RequestMsgWithContext(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
	return t.nc.RequestMsgWithContext(ctx, msg)
}

func (t natsTransport) PublishMsg(msg *nats.Msg) error { return t.nc.PublishMsg(msg) }

// noTransport is the Transport of a Leader given neither Conn nor
// Transport: nothing is forwarded.
type noTransport struct{}

func (noTransport) QueueSubscribe(string, string, nats.MsgHandler) (Subscription, error) {
	return nil, nats.ErrInvalidConnection
}

func (noTransport) RequestMsgWithContext(context.Context, *nats.Msg) (*nats.Msg, error) {
	return nil, nats.ErrInvalidConnection
}

func (noTransport) PublishMsg(*nats.Msg) error { return nats.ErrInvalidConnection }
