package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
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

// endpointLeader names forwarded refreshes in spans.
const endpointLeader = "token.refresh.leader"

// ServeLeader answers forwarded refresh reports with sources until ctx ends.
// Call it only while holding the lease.
func (s *Service) ServeLeader(ctx context.Context, sources map[string]Source) error {
	return s.ServeLeaderLookup(ctx, func(name string) (Source, bool) {
		src, ok := sources[name]
		return src, ok
	})
}

// ServeLeaderLookup is ServeLeader with a changing set of providers: lookup
// finds a provider's source for each forwarded refresh.
func (s *Service) ServeLeaderLookup(ctx context.Context, lookup func(string) (Source, bool)) error {
	sub, err := s.nc.Subscribe(LeaderRefreshPrefix+"*", func(msg *nats.Msg) {
		c := call{endpoint: endpointLeader, provider: strings.TrimPrefix(msg.Subject, LeaderRefreshPrefix), start: time.Now()}
		c.ctx, c.span = s.tr.Start(natstrace.Extract(context.Background(), msg.Header), endpointLeader, spanKindServer,
			trace.WithAttributes(attrSystem, semconv.MessagingDestinationName(msg.Subject), keyProvider.String(c.provider)))
		src, ok := lookup(c.provider)
		if !ok {
			s.fail(c, msg.Reply, nil, refresher.ErrUnknownProvider)
			return
		}
		var r wire.RefreshRequest
		if err := json.Unmarshal(msg.Data, &r); err != nil || r.InvalidToken == "" {
			s.fail(c, msg.Reply, nil, fmt.Errorf("%w: bad forwarded refresh", refresher.ErrBadRequest))
			return
		}
		s.async(c, msg.Reply, func(ctx context.Context) ([]byte, error) { return src.Refresh(ctx, r.InvalidToken) })
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
