package clustertest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bin holds the binaries TestMain builds.
var bin struct{ dir, natsServer, refresher string }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokenbus-clustertest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin.dir = dir
	bin.natsServer = filepath.Join(dir, "nats-server")
	bin.refresher = filepath.Join(dir, "refresher")
	for out, pkg := range map[string]string{
		bin.natsServer: "github.com/nats-io/nats-server/v2",
		bin.refresher:  "github.com/tokenbus/tokenbus/services/refresher/cmd/refresher",
	} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: building %s: %v\n", pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a child process that dies with the test.
type proc struct {
	name string
	path string
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

func startProc(t testing.TB, name, path string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, path: path, args: args, out: &syncBuffer{}}
	p.start(t)
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", p.name, p.out.String())
		}
	})
	return p
}

func (p *proc) start(t testing.TB) {
	t.Helper()
	p.cmd = exec.Command(p.path, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if _, set := os.LookupEnv("GOMAXPROCS"); p.path == bin.refresher && !set {
		// These tests run three refreshers and three nats-servers on the
		// machine's cores (2 in CI), where production gives each its own
		// node. The refresher raises GOMAXPROCS to 4 on a host with fewer
		// CPUs and no quota (cmd/refresher procs.go); here that would have
		// three processes at twice the cores between them, starving the
		// servers' Raft (JetStream unanswered for seconds in TestFailover,
		// red once in CI at d3b7d7e). Go's own default, as before.
		p.cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", runtime.NumCPU()))
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.done)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// kill sends SIGKILL (after SIGCONT, in case it is stopped) and waits.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.signal(syscall.SIGCONT)
	p.signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to 10 s before killing.
func (p *proc) stop() {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// freePorts returns n distinct free loopback ports.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return ports
}
