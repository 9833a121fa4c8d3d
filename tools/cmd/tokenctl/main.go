// Command tokenctl lets an operator see and poke tokenbus tokens: get a
// provider's current token, watch tokens as the refresher publishes them,
// report a token as rejected so that the refresher fetches a new one, and
// gather every refresher replica's status. It uses the Go client library,
// github.com/tokenbus/tokenbus/libs/tokenclient.
//
// Usage:
//
//	tokenctl [--server URL] [--creds FILE] [--json] <command> [arguments]
//
//	get <provider>        print the provider's current token
//	watch [provider]      print each token as it is published (Ctrl-C stops)
//	refresh <provider>    report the current token (or --token T) rejected; print the new one
//	status                every replica's view: leader, providers, expiry, last error
//
// Output is for people by default; --json prints JSON (one object per line
// for watch). Flags may come before or after the command. The exit status is
// 0 on success, 1 on failure and 2 on a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(exitCode(run(ctx, os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
}

// errUsage reports a usage error, already explained on stderr.
var errUsage = errors.New("usage")

func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintln(stderr, "tokenctl:", err)
		return 1
	}
}

const usage = `usage: tokenctl [flags] <command> [arguments]

commands:
  get <provider>        print the provider's current token
  watch [provider]      print each token as it is published (Ctrl-C stops)
  refresh <provider>    report the current token (or --token T) as rejected; print the new one
  status                every refresher replica's view: leader, providers, expiry, last error

flags (before or after the command):
`

// config is what the flags say.
type config struct {
	server  string
	creds   string
	bucket  string
	json    bool
	timeout time.Duration
	wait    time.Duration
	token   string
	count   int
}

func defaultServer() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return nats.DefaultURL
}

// parse reads flags interleaved with positional arguments.
func parse(args []string, stderr io.Writer) (config, []string, error) {
	var cfg config
	fs := flag.NewFlagSet("tokenctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.server, "server", defaultServer(), "NATS server URL(s), comma-separated ($NATS_URL)")
	fs.StringVar(&cfg.creds, "creds", "", "NATS credentials (.creds) file")
	fs.StringVar(&cfg.bucket, "bucket", wire.DefaultBucket, "KV bucket the refresher publishes to (watch)")
	fs.BoolVar(&cfg.json, "json", false, "print JSON instead of text")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "how long a request may take")
	fs.DurationVar(&cfg.wait, "wait", 300*time.Millisecond, "status: how long to gather replies from replicas")
	fs.StringVar(&cfg.token, "token", "", "refresh: the rejected access token (default: the current one)")
	fs.IntVar(&cfg.count, "count", 0, "watch: exit after this many tokens (0: run until interrupted)")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return cfg, nil, err
			}
			return cfg, nil, errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if cfg.timeout <= 0 || cfg.wait <= 0 || cfg.count < 0 {
		fmt.Fprintln(stderr, "tokenctl: --timeout and --wait must be positive, --count not negative")
		return cfg, nil, errUsage
	}
	return cfg, pos, nil
}

// run executes one command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, pos, err := parse(args, stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := pos[0], pos[1:]
	need := func(n int, what string) error {
		if len(rest) != n {
			fmt.Fprintf(stderr, "usage: tokenctl %s %s\n", cmd, what)
			return errUsage
		}
		return nil
	}
	switch cmd {
	case "get", "refresh":
		if err := need(1, "<provider>"); err != nil {
			return err
		}
	case "watch":
		if len(rest) > 1 {
			return need(0, "[provider]")
		}
	case "status":
		if err := need(0, ""); err != nil {
			return err
		}
	default:
		fmt.Fprintf(stderr, "tokenctl: unknown command %q\n%s", cmd, usage)
		return errUsage
	}

	opts := []nats.Option{nats.Name("tokenctl"), nats.Timeout(cfg.timeout)}
	if cfg.creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.creds))
	}
	if cmd == "watch" {
		opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	}
	nc, err := nats.Connect(cfg.server, opts...)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redact(cfg.server), err)
	}
	defer nc.Close()
	out := &printer{w: stdout, json: cfg.json, now: time.Now}

	switch cmd {
	case "get":
		return get(ctx, nc, cfg, rest[0], out)
	case "refresh":
		return refresh(ctx, nc, cfg, rest[0], out)
	case "status":
		return status(ctx, nc, cfg, out)
	default:
		provider := ""
		if len(rest) == 1 {
			provider = rest[0]
		}
		return watch(ctx, nc, cfg, provider, out, stderr)
	}
}

func requestClient(nc *nats.Conn, cfg config) (*tokenclient.Client, error) {
	return tokenclient.New(nc, tokenclient.WithoutWatch(), tokenclient.WithTimeout(cfg.timeout), tokenclient.WithStatusWait(cfg.wait))
}

func get(ctx context.Context, nc *nats.Conn, cfg config, provider string, out *printer) error {
	tc, err := requestClient(nc, cfg)
	if err != nil {
		return err
	}
	defer tc.Close()
	tok, err := tc.Token(ctx, provider)
	if err != nil {
		return err
	}
	return out.token(tok)
}

func refresh(ctx context.Context, nc *nats.Conn, cfg config, provider string, out *printer) error {
	tc, err := requestClient(nc, cfg)
	if err != nil {
		return err
	}
	defer tc.Close()
	rejected := cfg.token
	if rejected == "" {
		cur, err := tc.Token(ctx, provider)
		if err != nil {
			return err
		}
		rejected = cur.AccessToken
	}
	tok, err := tc.Invalidate(ctx, provider, rejected)
	if err != nil {
		return err
	}
	return out.refreshed(rejected, tok)
}

func status(ctx context.Context, nc *nats.Conn, cfg config, out *printer) error {
	tc, err := requestClient(nc, cfg)
	if err != nil {
		return err
	}
	defer tc.Close()
	st, err := tc.Status(ctx)
	if err != nil {
		return err
	}
	return out.status(st)
}

func watch(ctx context.Context, nc *nats.Conn, cfg config, provider string, out *printer, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan tokenclient.Event, 64)
	// The KV watch, not token.updates: an operator's watch shows every
	// provider's current token at once, and one consumer for the few
	// minutes it runs costs nothing (SPEC §9 is for the fleet).
	tc, err := tokenclient.New(nc, tokenclient.WithBucket(cfg.bucket), tokenclient.WithTimeout(cfg.timeout),
		tokenclient.WithFollowMode(tokenclient.FollowKVWatch),
		tokenclient.WithOnUpdate(func(ev tokenclient.Event) {
			if provider == "" || ev.Provider == provider {
				select {
				case events <- ev:
				case <-ctx.Done():
				}
			}
		}),
		tokenclient.WithErrorHandler(func(err error) { fmt.Fprintln(stderr, "tokenctl: watch:", err) }),
	)
	if err != nil {
		return err
	}
	defer func() {
		cancel() // unblocks the update callback before Close waits for it
		_ = tc.Close()
	}()
	for n := 0; cfg.count == 0 || n < cfg.count; n++ {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			if err := out.event(ev); err != nil {
				return err
			}
		}
	}
	return nil
}
