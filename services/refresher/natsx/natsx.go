// Package natsx is the refresher's NATS adapter: it runs the embedded
// nats-server, opens the client connection (reconnecting forever and logging
// every change), and stores tokens in the JetStream KV bucket.
package natsx

import (
	"context"
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
	}
	name := cfg.Name
	if name == "" {
		host, _ := os.Hostname()
		name = "tokenbus-" + host + "-" + strconv.Itoa(port)
	}
	opts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		// Tokens must survive a crash of the whole install: fsync each write.
		SyncAlways: true,
	}
	if c := cfg.Cluster; c != nil {
		chost, cport, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return nil, fmt.Errorf("natsx: cluster listen %q: %w", c.Listen, err)
		}
		opts.Cluster.Name = c.Name
		opts.Cluster.Host = chost
		if opts.Cluster.Port, err = strconv.Atoi(cport); err != nil {
			return nil, fmt.Errorf("natsx: cluster listen %q: bad port", c.Listen)
		}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsx: embedded server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("natsx: embedded server did not become ready within 30s (is the port in use?)")
	}
	return ns, nil
}

// ConnectConfig configures the client connection.
type ConnectConfig struct {
	// URL is one or more comma-separated server URLs.
	URL string
	// Creds is an optional .creds file.
	Creds string
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
	url := cfg.URL
	if cfg.Embedded != nil {
		opts = append(opts, nats.InProcessServer(cfg.Embedded))
		url = cfg.Embedded.ClientURL()
	}
	nc, err := nats.Connect(url, opts...)
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
