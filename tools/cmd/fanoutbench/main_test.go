package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain runs the child side when the parent re-executes this test binary
// as fanoutbench -child.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-child" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// TestRunSmall runs both modes with a handful of clients: every client gets
// every rotation, and only the KV-watch mode creates consumers.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	var out strings.Builder
	cfg := config{sizes: []int{6}, modes: []string{"updates", "kv-watch"}, perConn: 4, rotations: 3, interval: 50 * time.Millisecond}
	if err := run(cfg, &out); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	rows := 0
	for _, line := range strings.Split(out.String(), "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) < 10 || !strings.HasPrefix(line, "| 6 |") {
			continue
		}
		rows++
		mode, conns, missed, consumers := cells[1], cells[2], cells[8], cells[9]
		if conns != "2" || missed != "0" {
			t.Errorf("%s: conns %s, missed %s; want 2, 0", mode, conns, missed)
		}
		if want := map[string]string{"updates": "0", "kv-watch": "6"}[mode]; consumers != want {
			t.Errorf("%s: %s consumers, want %s", mode, consumers, want)
		}
	}
	if rows != 2 {
		t.Fatalf("%d result rows, want 2", rows)
	}
}
