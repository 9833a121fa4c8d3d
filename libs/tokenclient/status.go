package tokenclient

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/natstrace"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Status is one refresher replica's view of the cluster (wire.Status).
type Status = wire.Status

// Status asks every refresher replica for its view on token.status and
// gathers the replies for the client's status wait (WithStatusWait, default
// 300ms) or until ctx ends, whichever comes first. The lease holder comes
// first, then the others by instance name.
//
// Errors: ErrUnavailable when no replica answers; ErrClosed after Close;
// ctx's error if ctx was already done.
func (c *Client) Status(ctx context.Context) ([]Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.statusWait)
	defer cancel()
	inbox := c.nc.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, requestError("token.status", "", ctx, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	msg := nats.NewMsg(wire.StatusSubject)
	msg.Reply = inbox
	natstrace.Inject(ctx, msg)
	if err := c.nc.PublishMsg(msg); err != nil {
		return nil, requestError("token.status", "", ctx, err)
	}
	var out []Status
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break
		}
		if m.Header.Get("Status") == "503" { // no responders
			break
		}
		var st Status
		if err := json.Unmarshal(m.Data, &st); err != nil {
			continue
		}
		out = append(out, st)
	}
	if len(out) == 0 {
		if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		return nil, fmt.Errorf("tokenclient: token.status: no refresher answered within %v: %w", c.o.statusWait, ErrUnavailable)
	}
	slices.SortFunc(out, func(a, b Status) int {
		if a.Leader != b.Leader {
			if a.Leader {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Instance, b.Instance)
	})
	return out, nil
}

// statusWaitDefault is the default of WithStatusWait.
const statusWaitDefault = 300 * time.Millisecond
