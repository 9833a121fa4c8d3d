package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
)

// fleetWindow is how long fleetOpensFormat gathers token.status replies.
const fleetWindow = time.Second

// fleetOpensFormat reports whether every replica that answers token.status
// within fleetWindow opens the sealed-record format this release writes.
// Re-sealing an entry writes that format, which a replica of an earlier
// release cannot open; so during a rolling upgrade the lease holder re-seals
// nothing until the last replica of the previous release is gone
// (TestRollingUpgrade). A replica that answers nothing in time is not
// counted: one that cannot answer token.status serves nothing either.
func (m *Main) fleetOpensFormat(ctx context.Context) bool {
	inbox := m.nc.NewInbox()
	sub, err := m.nc.SubscribeSync(inbox)
	if err != nil {
		return false
	}
	defer func() { _ = sub.Unsubscribe() }()
	// One provider at most a reply: the answer is the header, not the page.
	if err := m.nc.PublishRequest(wire.StatusSubject, inbox, []byte(`{"limit":1}`)); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, fleetWindow)
	defer cancel()
	var replies, older int
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break
		}
		var st wire.Status
		if json.Unmarshal(msg.Data, &st) != nil {
			continue
		}
		replies++
		if st.SealFormat < credentials.Format {
			older++
		}
	}
	if older > 0 && !m.sealWaitLogged {
		m.sealWaitLogged = true
		m.logger.Info("re-sealing runtime providers waits: a replica of an earlier release still answers token.status and could not open the new format",
			slog.Int("replicas", replies), slog.Int("earlier_release", older))
	}
	if older == 0 && replies > 0 {
		m.sealWaitLogged = false
	}
	return older == 0 && replies > 0
}
