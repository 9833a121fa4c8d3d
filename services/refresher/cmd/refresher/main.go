// Command refresher is the tokenbus refresher: it keeps payment-provider
// access tokens fresh and serves them over NATS. See the repository README.
//
//	refresher --config FILE        run with a configuration file
//	refresher --demo               run against the built-in simulator, no account needed
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tokenbus/tokenbus/services/refresher/telemetry"
)

// Version is set at build time with -ldflags "-X main.Version=…".
var Version = "0.1.0-dev"

func main() {
	procs := defaultFloorProcs(os.LookupEnv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, procs); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // --help: usage printed, exit 0
		}
		fmt.Fprintln(os.Stderr, errorLine(err))
		os.Exit(2)
	}
}

// errorLine is err as the one line printed before exiting, prefixed
// "refresher: " once (errors of the refresher package carry it already).
func errorLine(err error) string {
	msg := err.Error()
	if strings.HasPrefix(msg, "refresher: ") {
		return msg
	}
	return "refresher: " + msg
}

// run parses args, starts the refresher and blocks until ctx ends; procs
// is main's GOMAXPROCS decision, logged once the logger exists.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, procs procsFloor) error {
	fs := flag.NewFlagSet("refresher", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts Options
	fs.StringVar(&opts.ConfigPath, "config", "", "configuration file (YAML); see docs/configuration.md")
	fs.BoolVar(&opts.Demo, "demo", false, "start the built-in provider simulator; without --config, use the demo configuration")
	fs.StringVar(&opts.SimulatorListen, "simulator-listen", "127.0.0.1:8090", "address of the built-in simulator with --demo")
	version := fs.Bool("version", false, "print the version and exit")
	debugPprof := fs.String("debug-pprof", "", "serve net/http/pprof on this loopback host:port (off by default; for profiling)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: refresher --config FILE | --demo [--config FILE]\n\nKeeps payment-provider access tokens fresh and serves them over NATS (docs/configuration.md).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		fmt.Fprintln(stdout, "refresher", Version)
		return nil
	}
	if opts.ConfigPath == "" && !opts.Demo {
		fs.Usage()
		return errors.New("--config FILE or --demo is required")
	}
	if *debugPprof != "" {
		if err := servePprof(ctx, *debugPprof); err != nil {
			return err
		}
	}
	m := NewMain(opts, stdout, stderr)
	if err := m.Run(ctx); err != nil {
		_ = m.Close()
		if ctx.Err() != nil {
			return nil // interrupted while starting (e.g. waiting for NATS): a clean stop
		}
		return err
	}
	procs.log(m.logger)
	<-ctx.Done()
	m.logger.Info("shutting down")
	return m.Close()
}

// newLogger returns the process logger for level and format; records made
// inside a span carry its trace_id and span_id.
func newLogger(w io.Writer, level, format string) *slog.Logger {
	return telemetry.NewLogger(w, level, format)
}
