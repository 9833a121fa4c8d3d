package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// stdin is where providers put reads secrets and JSON providers from.
var stdin io.Reader = os.Stdin

// getenv reads the secret environment variables.
var getenv = os.Getenv

// Environment variables providers put reads secrets from: never from the
// command line, where ps would show them.
const (
	envConsumerSecret = "TOKENBUS_CONSUMER_SECRET"
	envPassword       = "TOKENBUS_PASSWORD"
	envClientSecret   = "TOKENBUS_CLIENT_SECRET"
)

// secretField returns the secret field of kind and its environment variable.
func secretField(kind string) (field, env string) {
	switch kind {
	case "daraja":
		return "consumer_secret", envConsumerSecret
	case "mpay":
		return "password", envPassword
	default:
		return "client_secret", envClientSecret
	}
}

// providerFlags are the non-secret fields of a provider given as flags.
type providerFlags struct {
	kind, baseURL, consumerKey, username, tokenURL, clientID, authStyle, refreshBefore, timeout string
	pool                                                                                        int
	scopes                                                                                      string
	secretStdin                                                                                 bool
	after                                                                                       string
	limit                                                                                       int
	all                                                                                         bool
}

// providers runs "providers put|list|delete".
func providers(ctx context.Context, nc *nats.Conn, cfg config, args []string, out *printer) error {
	switch args[0] {
	case "put":
		if args[1] == "-" {
			return putStream(ctx, nc, cfg, out, out.errw)
		}
		body, err := providerJSON(args[1], cfg.prov)
		if err != nil {
			return err
		}
		return putOne(ctx, nc, cfg, body, out)
	case "delete":
		b, _ := json.Marshal(wire.ProviderDeleteRequest{Name: args[1]})
		data, err := adminRequest(ctx, nc, cfg, wire.ProvidersDeleteSubject, b)
		if err != nil {
			return err
		}
		if out.json {
			_, err := fmt.Fprintf(out.w, "%s\n", data)
			return err
		}
		_, err = fmt.Fprintf(out.w, "deleted %s\n", args[1])
		return err
	default: // list
		return list(ctx, nc, cfg, out)
	}
}

// providerJSON builds one provider's JSON from the flags, its secret from
// the environment or stdin.
func providerJSON(name string, f providerFlags) ([]byte, error) {
	if f.kind == "" {
		return nil, errors.New("providers put: --kind is required (daraja, mpay, oauth2 or airtel)")
	}
	p := map[string]any{"name": name, "kind": f.kind}
	set := func(k, v string) {
		if v != "" {
			p[k] = v
		}
	}
	set("base_url", f.baseURL)
	set("consumer_key", f.consumerKey)
	set("username", f.username)
	set("token_url", f.tokenURL)
	set("client_id", f.clientID)
	set("auth_style", f.authStyle)
	set("refresh_before", f.refreshBefore)
	set("timeout", f.timeout)
	if f.pool != 0 {
		p["pool"] = f.pool
	}
	if f.scopes != "" {
		p["scopes"] = strings.Split(f.scopes, ",")
	}
	field, env := secretField(f.kind)
	lookup := getenv
	if lookup == nil {
		lookup = os.Getenv
	}
	secret := lookup(env)
	if f.secretStdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("providers put: reading the secret from stdin: %w", err)
		}
		secret = strings.TrimRight(line, "\r\n")
	}
	if secret == "" {
		return nil, fmt.Errorf("providers put: no %s: set %s, or pass --secret-stdin and write it to stdin (never on the command line)", field, env)
	}
	p[field] = secret
	return json.Marshal(p)
}

func putOne(ctx context.Context, nc *nats.Conn, cfg config, body []byte, out *printer) error {
	data, err := adminRequest(ctx, nc, cfg, wire.ProvidersPutSubject, body)
	if err != nil {
		return err
	}
	var r wire.ProviderPutReply
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("providers put: malformed reply")
	}
	if out.json {
		_, err := fmt.Fprintf(out.w, "%s\n", data)
		return err
	}
	_, err = fmt.Fprintf(out.w, "stored %s (%s) at revision %d\n", r.Name, r.Kind, r.Revision)
	return err
}

func list(ctx context.Context, nc *nats.Conn, cfg config, out *printer) error {
	tw := tabwriter.NewWriter(out.w, 0, 4, 2, ' ', 0)
	if !out.json {
		fmt.Fprintln(tw, "NAME\tKIND\tSOURCE\tSTATE")
	}
	after := cfg.prov.after
	for {
		b, _ := json.Marshal(wire.ProviderListRequest{After: after, Limit: cfg.prov.limit})
		data, err := adminRequest(ctx, nc, cfg, wire.ProvidersListSubject, b)
		if err != nil {
			return err
		}
		var r wire.ProviderListReply
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("providers list: malformed reply")
		}
		for _, p := range r.Providers {
			if out.json {
				b, _ := json.Marshal(p)
				fmt.Fprintf(out.w, "%s\n", b)
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Kind, p.Source, p.State)
			}
		}
		if r.Next == "" || !cfg.prov.all {
			if !out.json {
				if err := tw.Flush(); err != nil {
					return err
				}
				if r.Next != "" {
					fmt.Fprintf(out.w, "more: tokenctl providers list --after %s (or --all)\n", r.Next)
				}
			}
			return nil
		}
		after = r.Next
	}
}

// adminRequest sends a tokenbus.providers.* request and returns the reply,
// or the service's error with its code.
func adminRequest(ctx context.Context, nc *nats.Conn, cfg config, subject string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, subject, body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	if code := msg.Header.Get(wire.HeaderErrorCode); code != "" {
		var eb wire.ErrorBody
		m := msg.Header.Get(wire.HeaderError)
		if json.Unmarshal(msg.Data, &eb) == nil && eb.Error.Message != "" {
			m = eb.Error.Message
		}
		return nil, fmt.Errorf("%s: %s %s", subject, code, m)
	}
	return msg.Data, nil
}
