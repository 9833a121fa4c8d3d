package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

// --help and --version exit 0 (run returns nil or flag.ErrHelp); no
// arguments is a usage error; an error line has one "refresher: " prefix.
func TestCommandLine(t *testing.T) {
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"--help"}, &out, &errOut, procsFloor{}); !errors.Is(err, flag.ErrHelp) || !strings.Contains(errOut.String(), "--config FILE") {
		t.Errorf("--help: %v %q", err, errOut.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"--version"}, &out, &errOut, procsFloor{}); err != nil || out.String() != "refresher "+Version+"\n" {
		t.Errorf("--version: %v %q", err, out.String())
	}
	if err := run(context.Background(), nil, &out, &errOut, procsFloor{}); err == nil || errors.Is(err, flag.ErrHelp) {
		t.Errorf("no arguments: %v", err)
	}
	for _, err := range []error{errors.New("http.listen x: in use"), fmt.Errorf("refresher: no valid token")} {
		if line := errorLine(err); strings.Count(line, "refresher: ") != 1 || !strings.HasPrefix(line, "refresher: ") {
			t.Errorf("errorLine(%q) = %q", err, line)
		}
	}
}
