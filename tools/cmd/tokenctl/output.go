package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// printer writes results for people, or as JSON.
type printer struct {
	w    io.Writer
	errw io.Writer // progress and refusals (stderr)
	json bool
	now  func() time.Time
}

func (p *printer) writeJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(p.w, "%s\n", b)
	return err
}

// token prints a whole token: `get` is how an operator obtains one.
func (p *printer) token(tok tokenclient.Token) error {
	if p.json {
		return p.writeJSON(tok)
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "provider\t%s\n", tok.Provider)
	fmt.Fprintf(tw, "token\t%s\n", tok.AccessToken)
	fmt.Fprintf(tw, "type\t%s\n", tok.TokenType)
	fmt.Fprintf(tw, "issued_at\t%s\n", p.when(tok.IssuedAt))
	fmt.Fprintf(tw, "expires_at\t%s\n", p.when(tok.ExpiresAt))
	return tw.Flush()
}

// refreshed reports the outcome of a refresh; tokens are abbreviated.
func (p *printer) refreshed(rejected string, tok tokenclient.Token) error {
	if p.json {
		return p.writeJSON(tok)
	}
	if tok.AccessToken == rejected {
		_, err := fmt.Fprintf(p.w, "%s: the refresher kept token %s (it is not the one it holds, or its refreshes are failing: see tokenctl status); expires %s\n",
			tok.Provider, short(tok.AccessToken), p.when(tok.ExpiresAt))
		return err
	}
	_, err := fmt.Fprintf(p.w, "%s: reported %s as rejected; new token %s, expires %s\n",
		tok.Provider, short(rejected), short(tok.AccessToken), p.when(tok.ExpiresAt))
	return err
}

// watchEvent is the JSON form of a watched change.
type watchEvent struct {
	Provider string             `json:"provider"`
	Revision uint64             `json:"revision"`
	Deleted  bool               `json:"deleted,omitempty"`
	Token    *tokenclient.Token `json:"token,omitempty"`
}

func (p *printer) event(ev tokenclient.Event) error {
	if p.json {
		we := watchEvent{Provider: ev.Provider, Revision: ev.Revision, Deleted: ev.Deleted}
		if !ev.Deleted {
			we.Token = &ev.Token
		}
		return p.writeJSON(we)
	}
	ts := p.now().Format("15:04:05")
	if ev.Deleted {
		_, err := fmt.Fprintf(p.w, "%s  %s  rev %d  deleted\n", ts, ev.Provider, ev.Revision)
		return err
	}
	_, err := fmt.Fprintf(p.w, "%s  %s  rev %d  token %s  expires %s\n", ts, ev.Provider, ev.Revision, short(ev.Token.AccessToken), p.when(ev.Token.ExpiresAt))
	return err
}

// providerEvent prints one provider event: the JSON as published with
// --json, else one line.
func (p *printer) providerEvent(ev tokenclient.ProviderEvent) error {
	if p.json {
		return p.writeJSON(ev)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s  %s", ev.At.Local().Format("15:04:05.000"), ev.Provider, ev.Type)
	for _, kv := range [][2]string{{"kind", ev.Kind}, {"cause", ev.Cause}, {"code", ev.Code}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if ev.Status != 0 {
		fmt.Fprintf(&b, " status=%d", ev.Status)
	}
	if ev.Attempt != 0 {
		fmt.Fprintf(&b, " attempt=%d", ev.Attempt)
	}
	if ev.RetryIn != nil {
		fmt.Fprintf(&b, " retry_in=%v", ev.RetryIn.D().Round(time.Millisecond))
	}
	if ev.FailingFor != nil {
		fmt.Fprintf(&b, " failing_for=%v", ev.FailingFor.D().Round(time.Millisecond))
	}
	if ev.ExpiresAt != nil {
		fmt.Fprintf(&b, " expires=%s", p.when(*ev.ExpiresAt))
	}
	if ev.Type == wire.EventForeignWrite {
		fmt.Fprintf(&b, " repaired=%t", ev.Repaired)
	}
	if ev.Detail != "" {
		fmt.Fprintf(&b, "  %s", ev.Detail)
	}
	_, err := fmt.Fprintln(p.w, b.String())
	return err
}

func (p *printer) status(replicas []tokenclient.Status) error {
	if p.json {
		return p.writeJSON(replicas)
	}
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tROLE\tVERSION\tTERM\tLEADER SEEN")
	for _, r := range replicas {
		role := "standby"
		if r.Leader {
			role = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Instance, role, r.Version, dash(r.Term), orDash(r.LeaderInstance))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// The providers as the first replica (the leader, if any) sees them.
	view := replicas[0]
	fmt.Fprintf(p.w, "\nproviders, as %s sees them:\n", view.Instance)
	fmt.Fprintln(tw, "PROVIDER\tKIND\tSTATE\tEXPIRES\tLAST REFRESH\tPOOL\tLAST ERROR")
	for _, pr := range view.Providers {
		pool := "-"
		if pr.Pool != nil {
			pool = fmt.Sprint(*pr.Pool)
		}
		lastErr := "-"
		if pr.LastError != "" {
			lastErr = pr.LastError
			if pr.LastErrorAt != nil {
				lastErr = p.ago(*pr.LastErrorAt) + ": " + lastErr
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", pr.Name, pr.Kind, pr.State, p.whenPtr(pr.ExpiresAt), p.agoPtr(pr.LastRefresh), pool, lastErr)
	}
	return tw.Flush()
}

// when formats t with a countdown or age: "10:59:59Z (in 59m12s)".
func (p *printer) when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(p.now()).Round(time.Second)
	rel := "in " + d.String()
	if d < 0 {
		rel = (-d).String() + " ago"
	}
	return fmt.Sprintf("%s (%s)", t.UTC().Format(time.RFC3339), rel)
}

func (p *printer) whenPtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return p.when(*t)
}

func (p *printer) ago(t time.Time) string {
	return p.now().Sub(t).Round(time.Second).String() + " ago"
}

func (p *printer) agoPtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return p.ago(*t)
}

// shortLen is how many leading characters short shows.
const shortLen = 6

// short abbreviates every token the same way: its first six characters and
// "…", enough to tell tokens apart, not enough to use one (nor to learn its
// length). A token under twelve characters shows only its first half.
func short(tok string) string {
	return tok[:min(shortLen, len(tok)/2)] + "…"
}

func dash(n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// redact hides any user:password in a comma-separated list of NATS URLs.
func redact(list string) string {
	parts := strings.Split(list, ",")
	for i, s := range parts {
		if u, err := url.Parse(strings.TrimSpace(s)); err == nil && u.User != nil {
			u.User = url.User("[redacted]")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
