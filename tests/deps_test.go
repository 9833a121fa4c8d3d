package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientHasNoServerDependency: nats-server is nowhere in the client
// library's module graph, tests included (test dependencies enter the graph
// too), nor among the packages its tests build. Services import the client;
// they must not inherit a server.
func TestClientHasNoServerDependency(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	dir, err := filepath.Abs(filepath.Join("..", "libs", "tokenclient"))
	if err != nil {
		t.Fatal(err)
	}
	goCmd := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(goCmd); err != nil {
		goCmd = "go"
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(goCmd, args...)
		cmd.Dir = dir
		// The module on its own, as a service importing it sees it.
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, out := range []string{
		run("mod", "graph"),
		run("list", "-m", "all"),
		run("list", "-deps", "-test", "./..."),
	} {
		if strings.Contains(out, "nats-server") {
			t.Fatalf("nats-server is in libs/tokenclient's dependencies:\n%s", grep(out, "nats-server"))
		}
	}
	if out := run("list", "-m", "all"); !strings.Contains(out, "github.com/nats-io/nats.go") {
		t.Fatalf("go list -m all looks wrong:\n%s", out)
	}
}

func grep(s, sub string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			b.WriteString(line)
		}
	}
	return b.String()
}
