package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// How "providers put -" sends: batches of batchSize providers (fewer when
// they would not fit three quarters of max_payload), batchesInFlight at
// once, so the refresher stores one batch while the next is on the wire.
// Larger batches gain nothing: the refresher's store acknowledges each
// provider after its write is on disk, and that is the rate (see
// docs/benchmarks.md). A batch may take longer than one request: it waits
// at least batchTimeout for the answer.
const (
	batchSize       = 250
	batchesInFlight = 4
	batchTimeout    = 2 * time.Minute
)

// isTerminal reports whether w is a terminal (a character device), where a
// progress bar may redraw itself.
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// refusal is one provider of the stream that was not stored.
type refusal struct {
	line int
	name string
	code int
	msg  string
}

// streamPut is one "providers put -" in progress.
type streamPut struct {
	nc    *nats.Conn
	cfg   config
	out   *printer
	errw  io.Writer
	total int64 // stdin's size when it is a file, for the progress bar

	mu       sync.Mutex
	read     int64 // bytes read
	stored   int
	refused  []refusal
	sent     int
	failure  error // a batch that got no answer: the run stops
	start    time.Time
	lastDraw time.Time
	bar      bool
}

// pending is a batch being built: the lines its providers came from.
type pending struct {
	lines []int
	raws  []json.RawMessage
	size  int
}

// putStream puts every provider of a JSON-lines stream on stdin (one JSON
// object a line; blank lines are skipped) through tokenbus.providers.put_many,
// in batches of batchSize, a few batches in flight. A
// line that is not a JSON object, and every provider the refresher refuses,
// is listed at the end on stderr by line, name, code and message (the
// refresher's messages name fields, never values; tokenctl never prints a
// line's content). On a terminal, stderr shows a progress bar. It returns
// an error if any provider was refused or a batch got no answer.
func putStream(ctx context.Context, nc *nats.Conn, cfg config, out *printer, errw io.Writer) error {
	sp := &streamPut{nc: nc, cfg: cfg, out: out, errw: errw, start: time.Now(), bar: isTerminal(errw)}
	if f, ok := stdin.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			sp.total = st.Size()
		}
	}
	maxBytes := int(nc.MaxPayload()) * 3 / 4
	sem := make(chan struct{}, batchesInFlight)
	var wg sync.WaitGroup
	send := func(b *pending) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sp.send(ctx, b)
		})
	}
	r := bufio.NewReaderSize(stdin, 64<<10)
	b := &pending{}
	line := 0
	for {
		raw, err := r.ReadBytes('\n')
		if len(raw) > 0 {
			line++
			sp.progress(int64(len(raw)))
			raw = bytes.TrimSpace(raw)
			switch {
			case len(raw) == 0:
			case raw[0] != '{' || !json.Valid(raw):
				sp.refuse(refusal{line: line, code: wire.CodeBadRequest, msg: "not a JSON object (tokenctl reads one provider per line)"})
			default:
				if len(b.raws) == batchSize || b.size+len(raw) > maxBytes && len(b.raws) > 0 {
					send(b)
					b = &pending{}
				}
				b.lines, b.raws, b.size = append(b.lines, line), append(b.raws, json.RawMessage(raw)), b.size+len(raw)+1
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			wg.Wait()
			return fmt.Errorf("providers put: stdin: %w", err)
		}
		if sp.stopped() || ctx.Err() != nil {
			break
		}
	}
	if len(b.raws) > 0 && !sp.stopped() && ctx.Err() == nil {
		send(b)
	}
	wg.Wait()
	return sp.finish(ctx, line)
}

// send puts one batch and records each provider's outcome.
func (sp *streamPut) send(ctx context.Context, b *pending) {
	if sp.stopped() {
		return
	}
	body, _ := json.Marshal(wire.ProviderPutManyRequest{Providers: b.raws})
	cfg := sp.cfg
	cfg.timeout = max(cfg.timeout, batchTimeout)
	data, err := adminRequest(ctx, sp.nc, cfg, wire.ProvidersPutManySubject, body)
	var r wire.ProviderPutManyReply
	if err == nil && (json.Unmarshal(data, &r) != nil || len(r.Results) != len(b.raws)) {
		err = fmt.Errorf("%s: malformed reply", wire.ProvidersPutManySubject)
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err != nil {
		if sp.failure == nil {
			sp.failure = fmt.Errorf("providers put: the batch of lines %d–%d: %w", b.lines[0], b.lines[len(b.lines)-1], err)
		}
		return
	}
	sp.sent += len(b.raws)
	for i, res := range r.Results {
		if res.Error == nil {
			sp.stored++
			if sp.out.json {
				_ = sp.out.writeJSON(struct {
					Line     int    `json:"line"`
					Name     string `json:"name"`
					Kind     string `json:"kind"`
					Revision uint64 `json:"revision"`
				}{b.lines[i], res.Name, res.Kind, res.Revision})
			}
			continue
		}
		// The refresher prefixes the index in the batch; the line says more.
		msg := res.Error.Message
		if j := strings.Index(msg, "]: "); strings.HasPrefix(msg, "providers[") && j > 0 {
			msg = msg[j+3:]
		}
		sp.refused = append(sp.refused, refusal{line: b.lines[i], name: res.Name, code: res.Error.Code, msg: msg})
	}
	sp.drawLocked(false)
}

func (sp *streamPut) stopped() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.failure != nil
}

func (sp *streamPut) refuse(r refusal) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.refused = append(sp.refused, r)
}

func (sp *streamPut) progress(n int64) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.read += n
	sp.drawLocked(false)
}

// drawLocked redraws the progress bar on a terminal, at most ten times a
// second (always when final). sp.mu is held.
func (sp *streamPut) drawLocked(final bool) {
	if !sp.bar || !final && time.Since(sp.lastDraw) < 100*time.Millisecond {
		return
	}
	sp.lastDraw = time.Now()
	rate := float64(sp.stored) / max(time.Since(sp.start).Seconds(), 1e-3)
	counts := fmt.Sprintf("%d stored, %d refused, %.0f/s", sp.stored, len(sp.refused), rate)
	if sp.total > 0 {
		const width = 30
		frac := min(float64(sp.read)/float64(sp.total), 1)
		n := int(frac * width)
		fmt.Fprintf(sp.errw, "\r[%s%s] %3.0f%%  %s ", strings.Repeat("#", n), strings.Repeat(" ", width-n), frac*100, counts)
	} else {
		fmt.Fprintf(sp.errw, "\r%s ", counts)
	}
	if final {
		fmt.Fprintln(sp.errw)
	}
}

// finish prints the summary and the refusals, sorted by line.
func (sp *streamPut) finish(ctx context.Context, lines int) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.drawLocked(true)
	if sp.stored == 0 && len(sp.refused) == 0 && sp.failure == nil && ctx.Err() == nil {
		return errors.New("providers put: no provider on stdin")
	}
	refused := sp.refused
	slices.SortFunc(refused, func(a, b refusal) int { return cmp.Compare(a.line, b.line) })
	for _, r := range refused {
		name := r.name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(sp.errw, "line %d (%s): %d %s\n", r.line, name, r.code, r.msg)
	}
	if !sp.out.json {
		fmt.Fprintf(sp.out.w, "stored %d providers, refused %d, in %.1fs (%d lines)\n", sp.stored, len(refused), time.Since(sp.start).Seconds(), lines)
	}
	switch {
	case sp.failure != nil:
		return fmt.Errorf("%w (stored %d before it; the rest was not sent)", sp.failure, sp.stored)
	case ctx.Err() != nil:
		return fmt.Errorf("providers put: interrupted after %d stored: %w", sp.stored, ctx.Err())
	case len(refused) > 0:
		return fmt.Errorf("providers put: %d of %d providers refused (listed above)", len(refused), sp.stored+len(refused))
	}
	return nil
}
