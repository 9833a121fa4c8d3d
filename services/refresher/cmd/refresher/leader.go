package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/lease"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// fencedPublisher writes tokens only under the current lease: the write
// carries the lease revision and JetStream rejects it if the lease has moved.
type fencedPublisher struct {
	store  *natsx.Store
	el     *lease.Elector
	writer string
}

var _ refresh.Publisher = fencedPublisher{}

// Publish writes tok fenced by the lease. A fence that moved because of our
// own renewal is read again; a write rejected under a lost lease comes back
// wrapped in refresh.ErrNotAllowed.
func (p fencedPublisher) Publish(ctx context.Context, tok wire.Token) (uint64, error) {
	for try := 0; ; try++ {
		f, err := p.el.Fence()
		if err != nil {
			return 0, fmt.Errorf("%w: %w", refresh.ErrNotAllowed, err)
		}
		rev, err := p.store.PublishFenced(ctx, tok, f.Subject, f.Revision, f.Term, p.writer)
		if errors.Is(err, natsx.ErrFenced) {
			if try < 2 {
				continue
			}
			return 0, fmt.Errorf("%w: %w", refresh.ErrNotAllowed, err)
		}
		return rev, err
	}
}

// replicaSource serves one shared-token provider on any replica: token.get
// from the replica's own copy (kept by its KV watch, or by its manager when it
// leads), token.refresh by the manager on the leader and forwarded to the
// leader from a standby.
type replicaSource struct {
	name string
	mgr  *refresh.Manager
	el   *lease.Elector
	nc   *nats.Conn
}

var (
	_ rpc.Source     = (*replicaSource)(nil)
	_ rpc.Revisioned = (*replicaSource)(nil)
)

// Get returns the current token from memory.
func (s *replicaSource) Get(ctx context.Context) ([]byte, error) { return s.mgr.Get(ctx) }

// GetRevision returns the current token from memory and its KV revision.
func (s *replicaSource) GetRevision(ctx context.Context) ([]byte, uint64, error) {
	return s.mgr.GetRevision(ctx)
}

// Refresh handles a rejected-token report.
func (s *replicaSource) Refresh(ctx context.Context, invalid string) ([]byte, error) {
	if s.el.Valid() {
		return s.mgr.Refresh(ctx, invalid)
	}
	if e, err := s.mgr.Current(); err == nil && e.Token.AccessToken != invalid {
		return e.JSON, nil
	}
	return rpc.Forward(ctx, s.nc, s.name, invalid)
}
