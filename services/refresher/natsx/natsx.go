// Package natsx is the refresher's NATS adapter: it runs the embedded
// nats-server, opens the client connection (reconnecting forever and logging
// every change), and stores tokens in the JetStream KV bucket.
package natsx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EmbeddedConfig configures the in-process nats-server.
type EmbeddedConfig struct {
	// Listen is host:port for client connections; port 0 picks a free port.
	Listen string
	// StoreDir is the JetStream file store directory.
	StoreDir string
	// Name is the server name; a default is derived from the host name and
	// Listen if empty. It must be unique within a cluster.
	Name string
	// Cluster, if set, joins the server to a NATS cluster through routes.
	Cluster *ClusterConfig
	// ConfigFile is a standard nats-server configuration file for
	// authorization, accounts, TLS and JetStream encryption at rest (see
	// serverOptions for what applies).
	ConfigFile string
	// Insecure allows a non-loopback Listen with no authorization.
	Insecure bool
}

// ClusterConfig joins an embedded server to a cluster.
type ClusterConfig struct {
	// Name is the cluster name, the same on every server.
	Name string
	// Listen is host:port for routes from the other servers.
	Listen string
	// Routes are the other servers' route URLs, e.g. nats-route://10.0.0.2:6222.
	Routes []string
}

// StartEmbedded starts nats-server in this process with JetStream on a file
// store and waits until it accepts connections. Stop it with Shutdown.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("natsx: embedded listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("natsx: embedded listen %q: bad port", cfg.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	} else if err := probeListen(cfg.Listen); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		host, _ := os.Hostname()
		name = "tokenbus-" + host + "-" + strconv.Itoa(port)
	}
	opts, err := serverOptions(cfg.ConfigFile)
	if err != nil {
		return nil, err
	}
	if opts.ServerName == "" {
		opts.ServerName = name
	}
	opts.Host, opts.Port = host, port
	opts.JetStream = true
	opts.StoreDir = cfg.StoreDir
	opts.NoSigs = true
	opts.NoLog = true
	// Tokens must survive a crash of the whole install: fsync each write.
	opts.SyncAlways = true
	if c := cfg.Cluster; c != nil {
		chost, cport, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return nil, fmt.Errorf("natsx: cluster listen %q: %w", c.Listen, err)
		}
		if opts.Cluster.Name != "" || opts.Cluster.Port != 0 || opts.Cluster.Host != "" || len(opts.Routes) > 0 {
			return nil, fmt.Errorf("natsx: %s: the cluster's name, listen and routes belong in nats.embedded.cluster; the file may only add authorization and tls to its cluster block", cfg.ConfigFile)
		}
		opts.Cluster.Name = c.Name
		opts.Cluster.Host = chost
		if opts.Cluster.Port, err = strconv.Atoi(cport); err != nil {
			return nil, fmt.Errorf("natsx: cluster listen %q: bad port", c.Listen)
		}
		if opts.Cluster.Port != 0 {
			if err := probeListen(c.Listen); err != nil {
				e := err.(*ListenError)
				e.Cluster = true
				return nil, e
			}
		}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
	}
	if open := unprotected(opts); !cfg.Insecure && len(open) > 0 {
		return nil, fmt.Errorf("natsx: %w (%s)", ErrUnprotected, strings.Join(open, "; "))
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsx: embedded server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("natsx: embedded server did not become ready within 30s")
	}
	return ns, nil
}

// ListenError is returned by StartEmbedded when an address it must listen on
// cannot be bound, typically because another process (another nats-server)
// already listens there.
type ListenError struct {
	// Addr is the address as configured.
	Addr string
	// Cluster is true for the cluster (route) address, false for clients.
	Cluster bool
	// Err is the error from the operating system.
	Err error
}

func (e *ListenError) Error() string {
	what := "client"
	if e.Cluster {
		what = "cluster"
	}
	return fmt.Sprintf("natsx: embedded server cannot listen for %s connections on %s: %v", what, e.Addr, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// probeListen binds addr and releases it at once, so that an address in use
// fails start-up at once: nats-server itself only logs it, and then never
// becomes ready.
func probeListen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err // "bind: address already in use", without the address again
		}
		return &ListenError{Addr: addr, Err: err}
	}
	return ln.Close()
}

// InboxPrefix is the inbox prefix of the refresher's connection: its NATS
// user may subscribe to InboxPrefix.> and to no other client's replies.
const InboxPrefix = "_INBOX_tokenbus-refresher"

// ConnectConfig configures the client connection.
type ConnectConfig struct {
	// URL is one or more comma-separated server URLs.
	URL string
	// Creds is an optional .creds file.
	Creds string
	// User and Password, or NkeySeedFile, authenticate the connection
	// instead of Creds.
	User, Password string
	NkeySeedFile   string
	// CAFile, CertFile and KeyFile configure TLS (all optional).
	CAFile, CertFile, KeyFile string
	// Name identifies the connection on the server.
	Name string
	// Logger receives connection state changes.
	Logger *slog.Logger
	// Embedded, if set, connects in-process to that server (URL is ignored).
	Embedded *server.Server
}

// Connect opens a connection that reconnects forever, logs every disconnect,
// reconnect and close, and does not buffer publishes while disconnected (a
// token write must never be replayed late, after a newer one).
func Connect(cfg ConnectConfig) (*nats.Conn, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		// Replies come to a prefix of the refresher's own, so that its role
		// (deploy/nats/auth.conf) subscribes to no other client's inbox.
		nats.CustomInboxPrefix(InboxPrefix),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.ReconnectBufSize(-1),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", slog.String("error", err.Error()))
			} else {
				log.Info("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", slog.String("server", nc.ConnectedUrlRedacted()))
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Info("nats connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("nats async error", slog.String("subject", subj), slog.String("error", err.Error()))
		}),
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.NkeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NkeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("natsx: nats.nkey_seed_file: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	if cfg.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.CertFile, cfg.KeyFile))
	}
	url := cfg.URL
	if cfg.Embedded != nil {
		opts = append(opts, nats.InProcessServer(cfg.Embedded))
		url = cfg.Embedded.ClientURL()
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil && cfg.Embedded != nil {
		return nil, fmt.Errorf("natsx: connect to the embedded server: %w (if nats.embedded.config sets authorization, the refresher's own user goes in nats.user and nats.password, nats.nkey_seed_file or nats.creds)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("natsx: connect %s: %w", RedactURL(url), err)
	}
	log.Info("nats connected", slog.String("server", nc.ConnectedUrlRedacted()))
	return nc, nil
}

// RedactURL hides any user:password in a comma-separated NATS URL list.
func RedactURL(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("[redacted]")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// Drain drains nc, waiting at most timeout for it to close.
func Drain(nc *nats.Conn, timeout time.Duration) {
	if nc == nil || nc.IsClosed() {
		return
	}
	done := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-done:
	case <-time.After(timeout):
		nc.Close()
	}
}

// ctxTimeout applies d to ctx when it has no deadline.
func ctxTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// ErrUnprotected is returned by StartEmbedded for a non-loopback listen
// address with no authorization: anyone who can reach the port could read
// every token, forge one, or stop refreshing.
var ErrUnprotected = errors.New(`the embedded NATS server would listen beyond loopback with no authorization, so anyone who can reach it could read and forge tokens: ` +
	`set nats.embedded.config to a nats-server configuration file with an authorization or accounts block (see deploy/nats/auth.conf and docs/security.md), ` +
	`authorize routes in its cluster block, keep monitoring on loopback, ` +
	`or listen on 127.0.0.1, or set nats.embedded.insecure: true to accept the risk`)

// serverOptions reads a nats-server configuration file (none: defaults).
// Its authorization, accounts, nkeys, operator/resolver, tls, JetStream
// encryption (cipher, key) and limits apply; the client listen address and
// the JetStream store directory are the tokenbus configuration's, and a
// file that sets them is refused rather than silently overridden.
func serverOptions(file string) (*server.Options, error) {
	if file == "" {
		return &server.Options{}, nil
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		return nil, fmt.Errorf("natsx: nats.embedded.config: %w", err)
	}
	var conflicts []string
	if opts.Host != "" || opts.Port != 0 {
		conflicts = append(conflicts, "listen/host/port (use nats.embedded.listen)")
	}
	if opts.StoreDir != "" {
		conflicts = append(conflicts, "jetstream store_dir (use nats.embedded.store_dir)")
	}
	if len(conflicts) > 0 {
		return nil, fmt.Errorf("natsx: nats.embedded.config %s sets %s, which the tokenbus configuration owns", file, strings.Join(conflicts, " and "))
	}
	return opts, nil
}

// unprotected lists the listeners of opts that would accept connections
// from beyond this machine with no authentication (protected mode, SPEC
// §10): the client port without users; a leaf node or websocket port
// without users of its own or the clients'; a cluster port without route
// credentials or verified TLS (routes carry every message and bypass every
// permission); and any monitoring port (nats-server's monitoring has no
// authentication). An empty host means every interface, as nats-server
// reads it.
func unprotected(o *server.Options) []string {
	var open []string
	reach := func(host string) bool { return !isLoopback(host) }
	clients := authorizes(o)
	if reach(o.Host) && !clients {
		open = append(open, fmt.Sprintf("client listener %s has no authorization", net.JoinHostPort(o.Host, strconv.Itoa(o.Port))))
	}
	if o.Cluster.Port != 0 && reach(o.Cluster.Host) && o.Cluster.Username == "" && !verifies(o.Cluster.TLSConfig) {
		open = append(open, fmt.Sprintf("cluster listener %s has no authorization: add authorization { user, password } (or tls { … verify: true }) to the cluster block and put the credentials in the route URLs",
			net.JoinHostPort(o.Cluster.Host, strconv.Itoa(o.Cluster.Port))))
	}
	if l := o.LeafNode; l.Port != 0 && reach(l.Host) && !clients && l.Username == "" && l.Nkey == "" && len(l.Users) == 0 && !verifies(l.TLSConfig) {
		open = append(open, fmt.Sprintf("leafnode listener %s has no authorization", net.JoinHostPort(l.Host, strconv.Itoa(l.Port))))
	}
	if w := o.Websocket; w.Port != 0 && reach(w.Host) && !clients && w.Username == "" && w.Token == "" && !verifies(w.TLSConfig) {
		open = append(open, fmt.Sprintf("websocket listener %s has no authorization", net.JoinHostPort(w.Host, strconv.Itoa(w.Port))))
	}
	if o.HTTPPort != 0 || o.HTTPSPort != 0 {
		host := o.HTTPHost
		if host == "" {
			host = o.Host // nats-server's default for the monitoring host
		}
		if reach(host) {
			open = append(open, fmt.Sprintf("monitoring listener on %q has no authentication in nats-server: bind it to 127.0.0.1", host))
		}
	}
	return open
}

// verifies reports whether a listener's TLS requires and verifies client
// certificates.
func verifies(c *tls.Config) bool {
	return c != nil && c.ClientAuth == tls.RequireAndVerifyClientCert
}

// authorizes reports whether opts turn away anonymous clients.
func authorizes(o *server.Options) bool {
	return len(o.Users) > 0 || len(o.Nkeys) > 0 || o.Authorization != "" || o.Username != "" ||
		len(o.TrustedOperators) > 0 || len(o.TrustedKeys) > 0 || o.AuthCallout != nil
}

// isLoopback reports whether host (from a listen address) only accepts
// connections from this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
