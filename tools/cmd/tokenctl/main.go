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
//	events [provider]     print each provider event (refresh_failed, expired, …) as it happens
//	refresh <provider>    report the current token (or --token T) rejected; print the new one
//	status                every replica's view: leader, providers, expiry, last error
//	permissions <role> [provider…]
//	                      print the nats-server account of a role: reader (of the
//	                      providers named), admin or observer (SPEC §10); --user names the user
//	providers put <name> --kind K [fields]   add or replace a runtime provider (SPEC §8)
//	providers put -       add or replace every provider of a JSON-lines stream on stdin
//	providers list        every provider, config-file and runtime, by name
//	providers delete <name>                  remove a runtime provider
//
// Secrets never come from the command line (ps shows it): providers put
// reads the provider's secret from $TOKENBUS_CONSUMER_SECRET (daraja),
// $TOKENBUS_PASSWORD (mpay) or $TOKENBUS_CLIENT_SECRET (oauth2, airtel), or
// with --secret-stdin from the first line of stdin; "providers put -" reads
// whole JSON providers, secrets included, from stdin.
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
	"strings"
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
  events [provider]     print each provider event as the leader publishes it: refreshed,
                        refresh_failed, credentials_rejected, recovered, expired, ... (Ctrl-C stops)
  refresh <provider>    report the current token (or --token T) as rejected; print the new one
  status                every refresher replica's view: leader, providers, expiry, last error
  permissions <role> [provider...]
                        print a nats-server account (its user, permissions and imports) for a
                        role: reader (of the providers named), admin or observer; --user names the user
  providers put <name> --kind K [--base-url U --consumer-key K | --username U | --token-url U --client-id C | ...]
                        add or replace a runtime provider; its secret from $TOKENBUS_CONSUMER_SECRET,
                        $TOKENBUS_PASSWORD or $TOKENBUS_CLIENT_SECRET, or --secret-stdin (never an argument)
  providers put -       add or replace every provider of a JSON-lines stream on stdin
                        (in batches; a progress bar on a terminal; refusals listed by line)
  providers list        every provider by name (--after, --limit, --all)
  providers delete <name>  remove a runtime provider

flags (before or after the command):
`

// config is what the flags say.
type config struct {
	server  string
	creds   string
	user    string
	inbox   string
	bucket  string
	json    bool
	timeout time.Duration
	wait    time.Duration
	token   string
	count   int
	version bool
	prov    providerFlags
}

// Version is set at build time with -ldflags "-X main.Version=…".
var Version = "0.1.0-dev"

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
	fs.StringVar(&cfg.user, "user", "", "NATS user name; the password is read from $NATS_PASSWORD (never a flag: flags show in ps)")
	fs.StringVar(&cfg.inbox, "inbox-prefix", "", "private inbox prefix (default _INBOX_<user> with --user)")
	fs.StringVar(&cfg.bucket, "bucket", wire.DefaultBucket, "KV bucket the refresher publishes to (watch)")
	fs.BoolVar(&cfg.json, "json", false, "print JSON instead of text")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "how long a request may take")
	fs.DurationVar(&cfg.wait, "wait", 300*time.Millisecond, "status: how long to gather replies from replicas")
	fs.StringVar(&cfg.token, "token", "", "refresh: the rejected access token (default: the current one)")
	fs.IntVar(&cfg.count, "count", 0, "watch, events: exit after this many tokens or events (0: run until interrupted)")
	fs.BoolVar(&cfg.version, "version", false, "print the version and exit")
	fs.StringVar(&cfg.prov.kind, "kind", "", "providers put: daraja, mpay, oauth2 or airtel")
	fs.StringVar(&cfg.prov.baseURL, "base-url", "", "providers put: base_url (daraja, mpay, airtel)")
	fs.StringVar(&cfg.prov.consumerKey, "consumer-key", "", "providers put: consumer_key (daraja)")
	fs.StringVar(&cfg.prov.username, "username", "", "providers put: username (mpay)")
	fs.StringVar(&cfg.prov.tokenURL, "token-url", "", "providers put: token_url (oauth2)")
	fs.StringVar(&cfg.prov.clientID, "client-id", "", "providers put: client_id (oauth2, airtel)")
	fs.StringVar(&cfg.prov.authStyle, "auth-style", "", "providers put: auth_style, header or params (oauth2)")
	fs.StringVar(&cfg.prov.scopes, "scopes", "", "providers put: comma-separated scopes (oauth2)")
	fs.IntVar(&cfg.prov.pool, "pool", 0, "providers put: single-use tokens kept ready (mpay)")
	fs.StringVar(&cfg.prov.refreshBefore, "refresh-before", "", "providers put: refresh_before, e.g. 5m")
	fs.StringVar(&cfg.prov.timeout, "request-timeout", "", "providers put: the provider's timeout, e.g. 10s")
	fs.BoolVar(&cfg.prov.secretStdin, "secret-stdin", false, "providers put: read the secret from the first line of stdin")
	fs.StringVar(&cfg.prov.after, "after", "", "providers list: start after this name")
	fs.IntVar(&cfg.prov.limit, "limit", 0, "providers list: page size (default and at most 1000)")
	fs.BoolVar(&cfg.prov.all, "all", false, "providers list: every page")
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
	if cfg.version {
		fmt.Fprintln(stdout, "tokenctl", Version)
		return nil
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
	case "watch", "events":
		if len(rest) > 1 {
			return need(0, "[provider]")
		}
	case "status":
		if err := need(0, ""); err != nil {
			return err
		}
	case "providers":
		switch {
		case len(rest) == 1 && rest[0] == "list":
		case len(rest) == 2 && (rest[0] == "put" || rest[0] == "delete"):
		default:
			fmt.Fprintf(stderr, "usage: tokenctl providers put <name>|-  ·  providers list  ·  providers delete <name>\n")
			return errUsage
		}
	case "permissions":
		return permissions(cfg, rest, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "tokenctl: unknown command %q\n%s", cmd, usage)
		return errUsage
	}

	opts := []nats.Option{nats.Name("tokenctl"), nats.Timeout(cfg.timeout)}
	if cfg.creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.creds))
	}
	if cfg.user != "" {
		opts = append(opts, nats.UserInfo(cfg.user, os.Getenv("NATS_PASSWORD")))
		if cfg.inbox == "" {
			cfg.inbox = wire.InboxPrefix(cfg.user)
		}
	}
	if cfg.inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.inbox))
	}
	if cmd == "watch" || cmd == "events" {
		opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	}
	nc, err := nats.Connect(cfg.server, opts...)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redact(cfg.server), err)
	}
	defer nc.Close()
	out := &printer{w: stdout, errw: stderr, json: cfg.json, now: time.Now}

	switch cmd {
	case "get":
		return get(ctx, nc, cfg, rest[0], out)
	case "refresh":
		return refresh(ctx, nc, cfg, rest[0], out)
	case "status":
		return status(ctx, nc, cfg, out)
	case "providers":
		return providers(ctx, nc, cfg, rest, out)
	case "events":
		provider := ""
		if len(rest) == 1 {
			provider = rest[0]
		}
		return followEvents(ctx, nc, cfg, provider, out)
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

// followEvents prints provider events (token.events.<provider>, or every
// provider's) until ctx ends or --count events were printed.
func followEvents(ctx context.Context, nc *nats.Conn, cfg config, provider string, out *printer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tc, err := requestClient(nc, cfg)
	if err != nil {
		return err
	}
	defer tc.Close()
	events := make(chan tokenclient.ProviderEvent, 256)
	sub, err := tc.Events(provider, func(ev tokenclient.ProviderEvent) {
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return err
	}
	defer func() {
		cancel()
		_ = sub.Stop()
	}()
	if err := nc.Flush(); err != nil {
		return err
	}
	for n := 0; cfg.count == 0 || n < cfg.count; n++ {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			if err := out.providerEvent(ev); err != nil {
				return err
			}
		}
	}
	return nil
}

// permissions prints a nats-server account for a role (SPEC §10,
// deploy/nats/auth.conf): one user with the role's permissions, and imports
// from the TOKENBUS account of exactly the services and streams the role
// uses. The password is a reference to an environment variable of the
// server's, so that no secret is printed. The user name is spliced into the
// configuration and the inbox prefix, so it must be one plain subject token.
func permissions(cfg config, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: tokenctl permissions reader|admin|observer [provider...] --user NAME")
		return errUsage
	}
	user := cfg.user
	if user == "" {
		fmt.Fprintln(stderr, "tokenctl: permissions: --user names the NATS user the block is for")
		return errUsage
	}
	if !wire.ValidUser(user) {
		fmt.Fprintln(stderr, "tokenctl: permissions: --user: want one subject token of letters, digits, '-' and '_', at most 64 characters")
		return errUsage
	}
	role, providers := args[0], args[1:]
	var (
		p                 wire.Permissions
		services, streams []string
	)
	switch role {
	case "reader":
		if len(providers) == 0 {
			fmt.Fprintln(stderr, "tokenctl: permissions reader: name the providers the reader may use")
			return errUsage
		}
		for _, name := range providers {
			if !wire.ValidName(name) {
				fmt.Fprintf(stderr, "tokenctl: permissions reader: %q is not a provider name ([a-z0-9][a-z0-9-]*)\n", name)
				return errUsage
			}
		}
		p = wire.ReaderPermissions(user, providers...)
		for _, name := range providers {
			services = append(services, wire.GetSubject(name), wire.RefreshSubject(name))
			streams = append(streams, wire.UpdatesSubject(name), "token.events."+name)
		}
	case "admin", "observer":
		if len(providers) > 0 {
			fmt.Fprintf(stderr, "tokenctl: permissions %s takes no providers\n", role)
			return errUsage
		}
		p, services = wire.AdminPermissions(user), []string{"tokenbus.providers.*"}
		if role == "observer" {
			p, services = wire.ObserverPermissions(user), []string{wire.StatusSubject, "$SRV.>"}
		}
	default:
		fmt.Fprintf(stderr, "tokenctl: permissions: unknown role %q (reader, admin or observer)\n", role)
		return errUsage
	}
	env := strings.ToUpper(strings.NewReplacer("-", "_").Replace(user)) + "_PASSWORD"
	var b strings.Builder
	fmt.Fprintf(&b, "# tokenbus %s %q: add to the accounts block of auth.conf, beside TOKENBUS.\n"+
		"# It connects with user %q and inbox prefix %q (nats.CustomInboxPrefix).\n"+
		"%q: {\n  users: [\n    { user: %q, password: $%s, permissions: %s }\n  ]\n  imports: [\n",
		role, user, user, wire.InboxPrefix(user), user, user, env, strings.ReplaceAll(p.Conf(), "\n", "\n      "))
	for _, subj := range services {
		fmt.Fprintf(&b, "    { service: { account: TOKENBUS, subject: %q } }\n", subj)
	}
	for _, subj := range streams {
		fmt.Fprintf(&b, "    { stream: { account: TOKENBUS, subject: %q } }\n", subj)
	}
	b.WriteString("  ]\n}\n")
	_, err := io.WriteString(stdout, b.String())
	return err
}
