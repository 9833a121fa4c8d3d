package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// Permissions is what a NATS user may publish and subscribe to (SPEC §10):
// the allow lists of a nats-server permissions block.
type Permissions struct {
	// Publish lists the subjects the user may publish to.
	Publish []string
	// Subscribe lists the subjects the user may subscribe to.
	Subscribe []string
	// AllowResponses lets the user answer the requests it receives (a
	// service), whatever their reply subjects.
	AllowResponses bool
}

// InboxPrefix returns the private inbox prefix of a user, _INBOX_<user>: a
// client connects with it (nats.CustomInboxPrefix) so that it subscribes only
// to its own replies, and no other client's.
func InboxPrefix(user string) string { return "_INBOX_" + user }

// IsInbox reports whether subject is an inbox: under _INBOX. (the NATS
// clients' default) or under a private prefix _INBOX_<user>. A refresher
// replies only to inboxes. A subject with a wildcard token (* or >) or an
// empty token is never an inbox: a reply is published to one subject.
func IsInbox(subject string) bool {
	rest, ok := strings.CutPrefix(subject, "_INBOX")
	if !ok || !literal(subject) {
		return false
	}
	if r, ok := strings.CutPrefix(rest, "."); ok {
		return r != ""
	}
	prefix, r, ok := strings.Cut(rest, ".")
	return ok && strings.HasPrefix(prefix, "_") && len(prefix) > 1 && r != ""
}

// literal reports whether subject is a valid literal subject: non-empty
// tokens, no wildcard, no white space.
func literal(subject string) bool {
	if subject == "" {
		return false
	}
	for tok := range strings.SplitSeq(subject, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n*>") {
			return false
		}
	}
	return true
}

// ValidUser reports whether user may name a NATS user in a permissions block
// and its inbox prefix _INBOX_<user>: one plain subject token of letters,
// digits, '-' and '_', at most 64 characters (no '.', no wildcard, no white
// space, nothing that could end a quoted string or a block).
func ValidUser(user string) bool {
	if user == "" || len(user) > 64 {
		return false
	}
	for _, c := range user {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// ReaderPermissions returns exactly what a service that uses the tokens of
// providers needs (SPEC §10): get and refresh them, follow their updates,
// follow its events (token.events.P), and receive replies in its own inbox. Nothing else: no other provider, no
// KV or JetStream API, no tokenbus.providers.
func ReaderPermissions(user string, providers ...string) Permissions {
	var p Permissions
	for _, name := range providers {
		p.Publish = append(p.Publish, GetSubject(name), RefreshSubject(name))
		p.Subscribe = append(p.Subscribe, UpdatesSubject(name), EventsSubject(name))
	}
	p.Subscribe = append(p.Subscribe, InboxPrefix(user)+".>")
	return p
}

// AdminPermissions returns what an operator or onboarding service needs to
// add, change and remove runtime providers (SPEC §8, §10), and nothing more:
// it cannot read a token.
func AdminPermissions(user string) Permissions {
	return Permissions{Publish: []string{"tokenbus.providers.>"}, Subscribe: []string{InboxPrefix(user) + ".>"}}
}

// ObserverPermissions returns what a dashboard or on-call engineer needs to
// see the refreshers' state (token.status, the micro service's $SRV
// endpoints), and nothing more: it cannot read a token.
func ObserverPermissions(user string) Permissions {
	return Permissions{Publish: []string{StatusSubject, "$SRV.>"}, Subscribe: []string{InboxPrefix(user) + ".>"}}
}

// Conf returns p as a nats-server configuration permissions block.
func (p Permissions) Conf() string {
	var b strings.Builder
	b.WriteString("{\n")
	list := func(name string, subjects []string) {
		if len(subjects) == 0 {
			return
		}
		q := make([]string, len(subjects))
		for i, s := range subjects {
			q[i] = strconv.Quote(s)
		}
		fmt.Fprintf(&b, "  %s: { allow: [%s] }\n", name, strings.Join(q, ", "))
	}
	list("publish", p.Publish)
	list("subscribe", p.Subscribe)
	if p.AllowResponses {
		b.WriteString("  allow_responses: true\n")
	}
	b.WriteString("}")
	return b.String()
}
