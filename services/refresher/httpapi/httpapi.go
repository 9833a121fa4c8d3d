// Package httpapi is the refresher's HTTP surface on http.listen: /healthz
// (the process is alive), /readyz (connected to NATS, able to read the
// token bucket, its watch of the bucket not stalled), /metrics
// (Prometheus), and the status page at / with the JSON it polls,
// /status.json. The page is plain HTML, CSS and JavaScript
// embedded in the binary: no build step, no external resources.
package httpapi

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"strconv"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Checker reports whether a dependency is usable right now.
type Checker interface {
	Check(ctx context.Context) error
}

// CheckFunc adapts a function to Checker.
type CheckFunc func(ctx context.Context) error

// Check calls f(ctx).
func (f CheckFunc) Check(ctx context.Context) error { return f(ctx) }

// Config says what the HTTP surface serves.
type Config struct {
	// Ready is consulted on every /readyz with a 2 s budget; required.
	Ready Checker
	// Metrics serves /metrics; not mounted when nil.
	Metrics http.Handler
	// Status reports this replica's view for the status page: the summary
	// of every provider and the page q asks for, as wire.Status.Page cuts
	// it. The page and /status.json are not mounted when nil.
	Status func(q wire.StatusRequest) wire.Status
	// History holds the recent refreshes charted on the status page; may be nil.
	History *History
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
}

//go:embed static
var static embed.FS

// StatusJSON is the body of /status.json.
type StatusJSON struct {
	// Now is the server's clock, so the page counts down in server time.
	Now    time.Time   `json:"now"`
	Status wire.Status `json:"status"`
	// History is the recent upstream attempts, oldest first.
	History []Attempt `json:"history"`
	// Ready is what /readyz would answer now; NotReady says why not.
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"`
}

// DefaultPage is how many providers /status.json lists unless ?limit= says
// otherwise (at most wire.StatusPageMax): the page stays fast with 10,000.
const DefaultPage = 100

// statusQuery reads the filter and page of a /status.json request:
// ?provider=, ?state=, ?condition=, ?search=, ?after= and ?limit=. The reply always
// carries the summary of every provider by state.
func statusQuery(r *http.Request) wire.StatusRequest {
	q := r.URL.Query()
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 {
		limit = DefaultPage
	}
	return wire.StatusRequest{Provider: q.Get("provider"), State: q.Get("state"), Condition: q.Get("condition"), Search: q.Get("search"), After: q.Get("after"), Limit: limit}
}

// Handler returns the mux with /healthz and /readyz only.
func Handler(ready Checker) *http.ServeMux { return New(Config{Ready: ready}) }

// New returns the mux for cfg.
func New(cfg Config) *http.ServeMux {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := cfg.Ready.Check(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	if cfg.Status != nil {
		mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
			body := StatusJSON{Now: cfg.Now().UTC(), Status: cfg.Status(statusQuery(r)), History: []Attempt{}, Ready: true}
			if cfg.History != nil {
				if h := cfg.History.Recent(); h != nil {
					body.History = h
				}
			}
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := cfg.Ready.Check(ctx); err != nil {
				body.Ready, body.NotReady = false, err.Error()
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			_ = json.NewEncoder(w).Encode(body)
		})
		sub, _ := fs.Sub(static, "static")
		files := http.FileServerFS(sub)
		mux.Handle("GET /{$}", files)
		mux.Handle("GET /static/", http.StripPrefix("/static/", files))
	}
	return mux
}
