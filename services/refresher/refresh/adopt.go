package refresh

import "github.com/tokenbus/tokenbus/libs/tokenclient/wire"

// Adopt takes tok, stored at rev by another replica, as this manager's copy
// unless the copy is newer (leader.Adopter: the writes a deposed leader
// refused while it believed it led).
func (m *Manager) Adopt(tok wire.Token, rev uint64) {
	if e, err := NewEntry(tok, rev); err == nil {
		m.slot.Store(e)
	}
}

// Unverified asks Run to fetch a new token at once if it holds a copy it
// did not fetch itself: the leader found no record of the copy in the bucket
// (deleted and created again), so it cannot tell whether a leader wrote it.
// A token this manager fetched (this term: served before its publish, which
// the leader's one pass of the bucket may not have seen yet) is left alone.
func (m *Manager) Unverified() {
	e := m.slot.Load()
	if e == nil {
		return
	}
	if own := m.fetched.Load(); own != nil && *own == e.Token.AccessToken {
		return
	}
	m.Replace(e.Token.AccessToken)
}

// Recreated is told that the bucket lost every token (deleted and created
// again): Run publishes its copy again if that is its own last publish, and
// fetches a new token otherwise (a copy taken from the bucket cannot be
// checked against its writer any more).
func (m *Manager) Recreated() {
	e := m.slot.Load()
	switch {
	case e == nil:
	case m.ownCopy():
		m.Repair()
	default:
		m.Replace(e.Token.AccessToken)
	}
}

// ownCopy reports whether the copy is this manager's own last publish (a
// token the leader need not check: this manager wrote it): at the revision
// of its last publish, and the token it fetched last. The revision alone
// does not tell: a recreated bucket numbers its writes from 1 again, so a
// forged write taken while standing by can sit at the revision of this
// manager's own last publish to the bucket before (soak seed 3265: the
// forged token was published again as the leader's own).
func (m *Manager) ownCopy() bool {
	e := m.slot.Load()
	if e == nil || e.Revision == 0 || e.Revision != m.published.Load() {
		return false
	}
	own := m.fetched.Load()
	return own != nil && *own == e.Token.AccessToken
}
