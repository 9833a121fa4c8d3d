// Command simulator serves the tokenbus provider simulator (package
// github.com/tokenbus/tokenbus/libs/simulator) over HTTP: simulated Daraja,
// mPay, OAuth2 and Airtel token endpoints, a protected endpoint for each, and
// an admin API under /_sim/ that lets other processes inject faults and read
// counters.
//
// Usage:
//
//	simulator [--listen 127.0.0.1:8090] [--daraja-ttl 3599s] [--error-rate 0.1] [--latency 200ms] ...
//
// It prints its base URL and endpoints on start, logs one line per request to
// standard error (never a credential or a token), and shuts down cleanly on
// SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tokenbus/tokenbus/libs/simulator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "simulator:", err)
		os.Exit(1)
	}
}

// errUsage reports bad flags, which the flag set has already printed.
var errUsage = errors.New("usage")

// shutdownTimeout bounds how long in-flight requests may take to finish.
const shutdownTimeout = 5 * time.Second

// run serves the simulator configured by args until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, faults, listen, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	sim := simulator.New(cfg)
	for _, k := range simulator.Kinds() {
		sim.SetFaults(k, faults)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "simulator listening on %s\n", base)
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	for _, r := range sim.Routes() {
		fmt.Fprintf(tw, "  %s\t%s%s\t%s\n", r.Method, base, r.Path, r.Doc)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil))
	// Requests run under their own context, ended on shutdown so that
	// injected latency does not hold it up.
	reqCtx, endRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer endRequests()
	srv := &http.Server{
		Handler:           logRequests(logger, sim),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	endRequests()
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func parseFlags(args []string, stderr io.Writer) (cfg simulator.Config, faults simulator.Faults, listen string, err error) {
	fs := flag.NewFlagSet("simulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&listen, "listen", "127.0.0.1:8090", "`address` to listen on (port 0 picks a free port)")

	fs.StringVar(&cfg.DarajaKey, "daraja-key", "sim-consumer-key", "Daraja consumer key")
	fs.StringVar(&cfg.DarajaSecret, "daraja-secret", "sim-consumer-secret", "Daraja consumer secret")
	fs.DurationVar(&cfg.DarajaTTL, "daraja-ttl", 3599*time.Second, "Daraja token lifetime")
	fs.BoolVar(&cfg.DarajaExpiresInNumber, "daraja-expires-in-number", false, "send Daraja's expires_in as a JSON number, not a string")

	fs.StringVar(&cfg.MPayUsername, "mpay-username", "sim-user", "mPay username")
	fs.StringVar(&cfg.MPayPassword, "mpay-password", "sim-pass", "mPay password")
	fs.DurationVar(&cfg.MPayTTL, "mpay-ttl", 2*time.Minute, "lifetime of an unused mPay token")

	fs.StringVar(&cfg.OAuth2ClientID, "oauth2-client-id", "sim-client", "OAuth2 client ID")
	fs.StringVar(&cfg.OAuth2ClientSecret, "oauth2-client-secret", "sim-client-secret", "OAuth2 client secret")
	fs.StringVar(&cfg.OAuth2SubscriptionKey, "oauth2-subscription-key", "", "if set, the Ocp-Apim-Subscription-Key the OAuth2 token endpoint requires (MTN MoMo)")
	fs.StringVar(&cfg.OAuth2TokenType, "oauth2-token-type", "access_token", "OAuth2 token_type answered")
	fs.DurationVar(&cfg.OAuth2TTL, "oauth2-ttl", 3600*time.Second, "OAuth2 token lifetime")

	fs.StringVar(&cfg.AirtelClientID, "airtel-client-id", "sim-airtel-id", "Airtel client ID")
	fs.StringVar(&cfg.AirtelClientSecret, "airtel-client-secret", "sim-airtel-secret", "Airtel client secret")
	fs.DurationVar(&cfg.AirtelTTL, "airtel-ttl", 180*time.Second, "Airtel token lifetime")

	fs.Float64Var(&faults.ErrorRate, "error-rate", 0, "fraction of token requests of every kind answered 503")
	fs.DurationVar(&faults.Latency, "latency", 0, "latency added to token requests of every kind")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, faults, "", err
		}
		return cfg, faults, "", errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		fs.Usage()
		return cfg, faults, "", errUsage
	}
	return cfg, faults, listen, faults.Validate()
}

// logRequests logs one line per request: never its headers or body, which
// carry credentials and tokens.
func logRequests(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		logger.LogAttrs(context.Background(), slog.LevelInfo, "request",
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", sw.status),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote", r.RemoteAddr),
			slog.String("user_agent", r.UserAgent()),
		)
	})
}

// statusWriter records the status written through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

// WriteHeader records status for the request log and passes it on.
func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
