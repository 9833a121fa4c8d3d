package natsx

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrJetStreamUnavailable is wrapped by every error of Store.Check and
// JetStreamProblem: JetStream cannot serve the bucket right now.
var ErrJetStreamUnavailable = errors.New("natsx: JetStream unavailable")

// Check reports whether JetStream can serve the bucket right now: the
// JetStream API answers (a cluster has a meta leader) and the bucket's stream
// has a leader. It answers within ctx, and at most 1.5 s.
func (s *Store) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	if _, err := s.js.AccountInfo(ctx); err != nil {
		return JetStreamProblem(err)
	}
	st, err := s.kv.Status(ctx)
	if err != nil {
		return JetStreamProblem(err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		if info := bs.StreamInfo(); info != nil && info.Cluster != nil && len(info.Cluster.Replicas) > 0 && info.Cluster.Leader == "" {
			return fmt.Errorf("%w: bucket %q has no leader (fewer than half of its %d servers are up?)", ErrJetStreamUnavailable, st.Bucket(), len(info.Cluster.Replicas)+1)
		}
	}
	return nil
}

// JetStreamProblem explains err, from a JetStream API call, in an operator's
// terms: JetStream disabled, a cluster without quorum, or no answer.
func JetStreamProblem(err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return fmt.Errorf("%w: JetStream is not enabled on the NATS server (start nats-server with -js, or jetstream {} in its configuration)", ErrJetStreamUnavailable)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("%w: JetStream is not enabled for this NATS account", ErrJetStreamUnavailable)
	case errors.As(err, &apiErr) && apiErr.ErrorCode == 10008:
		// JSClusterNotAvailErr: the cluster has no meta leader.
		return fmt.Errorf("%w: the NATS cluster has no JetStream leader (fewer than half of its servers are up?): %w", ErrJetStreamUnavailable, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, jetstream.ErrNoHeartbeat), errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: JetStream did not answer in time (a NATS cluster that lost quorum?)", ErrJetStreamUnavailable)
	}
	return fmt.Errorf("%w: %w", ErrJetStreamUnavailable, err)
}
