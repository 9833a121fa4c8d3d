package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/tokenclient/natstrace"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// LeaderRefreshPrefix is the internal subject prefix a standby forwards a
// token.refresh to: only the lease holder subscribes, so the refresh is
// carried out by the one replica that may call providers.
const LeaderRefreshPrefix = "tokenbus.leader.refresh."

// RemoteError is an error reply from another replica, kept with its wire
// code so that it is passed on unchanged.
type RemoteError struct {
	Code    int
	Message string
}

// Error returns the message with its code.
func (e *RemoteError) Error() string { return fmt.Sprintf("rpc: %d %s", e.Code, e.Message) }

// Forward asks the lease holder to handle a refresh report for provider and
// returns its reply. With no leader reachable it returns an error wrapping
// refresher.ErrNoToken (503).
func Forward(ctx context.Context, nc *nats.Conn, provider, invalid string) ([]byte, error) {
	body, _ := json.Marshal(wire.RefreshRequest{InvalidToken: invalid})
	msg := &nats.Msg{Subject: LeaderRefreshPrefix + provider, Data: body}
	natstrace.Inject(ctx, msg)
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("%w: no lease holder answered (%v)", refresher.ErrNoToken, err)
	}
	if c := reply.Header.Get(wire.HeaderErrorCode); c != "" {
		code, _ := strconv.Atoi(c)
		return nil, &RemoteError{Code: code, Message: reply.Header.Get(wire.HeaderError)}
	}
	return reply.Data, nil
}

// ServeLeader answers forwarded refresh reports with sources until ctx ends.
// Call it only while holding the lease.
func (s *Service) ServeLeader(ctx context.Context, sources map[string]Source) error {
	sub, err := s.nc.Subscribe(LeaderRefreshPrefix+"*", func(msg *nats.Msg) {
		provider := strings.TrimPrefix(msg.Subject, LeaderRefreshPrefix)
		sctx := natstrace.Extract(context.Background(), msg.Header)
		sctx, span := s.tr.Start(sctx, "token.refresh.leader", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", msg.Subject),
			attribute.String("tokenbus.provider", provider)))
		src, ok := sources[provider]
		if !ok {
			s.fail(span, msg.Reply, nil, provider, refresher.ErrUnknownProvider)
			return
		}
		var r wire.RefreshRequest
		if err := json.Unmarshal(msg.Data, &r); err != nil || r.InvalidToken == "" {
			s.fail(span, msg.Reply, nil, provider, fmt.Errorf("%w: bad forwarded refresh", refresher.ErrBadRequest))
			return
		}
		s.async(sctx, span, msg.Reply, provider, func(ctx context.Context) ([]byte, error) { return src.Refresh(ctx, r.InvalidToken) })
	})
	if err != nil {
		return fmt.Errorf("rpc: serve leader: %w", err)
	}
	<-ctx.Done()
	if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return err
	}
	return nil
}
