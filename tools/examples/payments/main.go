// Command payments is an example payments service: the pattern a team copies
// to call a payment provider with tokens from tokenbus. It takes payment
// requests on POST /pay and starts an M-Pesa STK push through Daraja with an
// http.Client whose Transport comes from tokenclient, so that:
//
//   - the Bearer token is read from memory (a KV watch), with no network hop
//     and no token fetching of its own;
//   - when Daraja rejects the token (it rotated, or another process fetched a
//     new one), the Transport reports it to the refresher and retries the call
//     once with the fresh token; a fleet reporting the same token causes one
//     upstream token request.
//
// Usage, against the demo (`go tool task run`):
//
//	go run ./tools/examples/payments [--nats nats://127.0.0.1:4222] [--daraja http://127.0.0.1:8090] [--listen 127.0.0.1:8070]
//	curl -s -X POST localhost:8070/pay -d '{"phone":"254708374149","amount":10}'
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "payments:", err)
		os.Exit(1)
	}
}

// run wires the service: NATS → tokenclient → http.Client → handler.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("payments", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats", envOr("NATS_URL", nats.DefaultURL), "NATS server URL ($NATS_URL)")
	provider := fs.String("provider", "daraja-sandbox", "tokenbus provider name of the Daraja app")
	darajaURL := fs.String("daraja", "http://127.0.0.1:8090", "Daraja base URL (the demo's simulator by default)")
	listen := fs.String("listen", "127.0.0.1:8070", "address to serve on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	// One NATS connection and one token client for the life of the process.
	nc, err := nats.Connect(*natsURL, append(natsLogging(log), nats.Name("payments"), nats.MaxReconnects(-1))...)
	if err != nil {
		return err
	}
	defer nc.Close()
	tokens, err := tokenclient.New(nc, tokenclient.WithErrorHandler(func(err error) {
		log.Warn("token watch", slog.String("error", err.Error()))
	}))
	if err != nil {
		return err
	}
	defer tokens.Close()

	// The whole integration: Daraja calls go through tokenbus's Transport.
	svc := &Service{
		Daraja:  &http.Client{Transport: tokens.Transport(*provider, http.DefaultTransport), Timeout: 30 * time.Second},
		BaseURL: strings.TrimRight(*darajaURL, "/"),
		Log:     log,
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "payments listening on http://%s (POST /pay)\n", ln.Addr())
	srv := &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Service takes payment requests and starts them at Daraja.
type Service struct {
	// Daraja is an http.Client whose Transport is tokenclient's: it carries
	// the Bearer token and recovers from a rejected one.
	Daraja *http.Client
	// BaseURL is Daraja's base URL.
	BaseURL string
	Log     *slog.Logger
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
}

// PayRequest is the body of POST /pay.
type PayRequest struct {
	Phone  string `json:"phone"`
	Amount int    `json:"amount"`
}

// Handler serves POST /pay.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /pay", s.pay)
	return mux
}

// Demo values from Daraja's sandbox documentation.
const (
	shortCode = "174379"
	passKey   = "demo-passkey"
)

func (s *Service) pay(w http.ResponseWriter, r *http.Request) {
	var req PayRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil || req.Phone == "" || req.Amount <= 0 {
		http.Error(w, `{"error":"want {\"phone\":\"2547…\",\"amount\":N}"}`, http.StatusBadRequest)
		return
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	ts := now().Format("20060102150405")
	body, _ := json.Marshal(map[string]any{
		"BusinessShortCode": shortCode,
		"Password":          base64.StdEncoding.EncodeToString([]byte(shortCode + passKey + ts)),
		"Timestamp":         ts,
		"TransactionType":   "CustomerPayBillOnline",
		"Amount":            req.Amount,
		"PartyA":            req.Phone,
		"PartyB":            shortCode,
		"PhoneNumber":       req.Phone,
		"CallBackURL":       "https://example.com/mpesa/callback",
		"AccountReference":  "tokenbus-demo",
		"TransactionDesc":   "tokenbus example",
	})
	// http.NewRequestWithContext sets GetBody for a bytes.Reader or
	// strings.Reader body, which lets the Transport replay it on its retry.
	call, err := http.NewRequestWithContext(r.Context(), http.MethodPost, s.BaseURL+"/mpesa/stkpush/v1/processrequest", bytes.NewReader(body))
	if err != nil {
		http.Error(w, `{"error":"internal"}`, http.StatusInternalServerError)
		return
	}
	call.Header.Set("Content-Type", "application/json")
	resp, err := s.Daraja.Do(call)
	if err != nil {
		// tokenclient's errors say why: no token yet (ErrUnavailable), the
		// provider refusing our credentials (ErrProviderFailed), …
		status := http.StatusBadGateway
		if errors.Is(err, tokenclient.ErrUnavailable) {
			status = http.StatusServiceUnavailable
		}
		s.Log.Error("daraja call failed", slog.String("error", err.Error()))
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	defer resp.Body.Close()
	var answer map[string]any
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&answer)
	if resp.StatusCode != http.StatusOK {
		s.Log.Warn("daraja refused the payment", slog.Int("status", resp.StatusCode), slog.Any("code", answer["errorCode"]))
		writeJSON(w, http.StatusBadGateway, map[string]any{"error": "daraja refused the payment", "daraja": answer})
		return
	}
	s.Log.Info("payment started", slog.Int("amount", req.Amount))
	writeJSON(w, http.StatusOK, map[string]any{"status": "accepted", "daraja": answer})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// natsLogging returns connection options that log through log rather than
// nats.go's default (a line on stderr for every asynchronous error): one line
// per disconnect and per reconnect, and the "consumer not active" errors that
// a KV watch's consumer reports while its server is away (the refresher
// restarting, with its embedded server) once until the next reconnect, at
// info: the token client rebuilds its watch by itself.
func natsLogging(log *slog.Logger) []nats.Option {
	var reported atomic.Bool // consumer not active, since the last reconnect
	return []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", slog.String("error", err.Error()))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			reported.Store(false)
			log.Info("nats reconnected", slog.String("server", nc.ConnectedUrlRedacted()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrConsumerNotActive) {
				if !reported.Swap(true) {
					log.Info("token watch interrupted; the token client rebuilds it", slog.String("error", err.Error()))
				}
				return
			}
			log.Warn("nats", slog.String("error", err.Error()))
		}),
	}
}
