package main

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/nats-io/nats.go"
)

// The image smoke test: build the image as `go tool task image` does, read
// it back, unpack its root filesystem and run the refresher from it:
// --version, then a --demo start that serves a token. As root it runs
// chrooted into the image's filesystem as the image's user (so the image's
// own /tmp, /data and CA bundle are what it uses); otherwise the binary runs
// from the unpacked tree. (Podman cannot run containers on the CI machine:
// its runtime may not set resource limits there.)
func TestImageRuns(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "refresher")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.Version=0.1.0", "-o", bin,
		"github.com/tokenbus/tokenbus/services/refresher/cmd/refresher")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const tag = "ghcr.io/tokenbus/refresher:0.1.0"
	out := filepath.Join(dir, "image.tar")
	if err := run([]string{"--binary", bin, "--tag", tag, "--out", out}); err != nil {
		t.Fatal(err)
	}

	ref, _ := name.NewTag(tag)
	img, err := tarball.ImageFromPath(out, &ref)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/refresher"}) || cf.Config.User != "65532:65532" || cf.OS != "linux" {
		t.Errorf("config: entrypoint %q, user %q, os %q", cf.Config.Entrypoint, cf.Config.User, cf.OS)
	}
	root := filepath.Join(dir, "rootfs")
	unpack(t, mutate.Extract(img), root)

	chroot := os.Geteuid() == 0
	command := func(args ...string) *exec.Cmd {
		if !chroot {
			return exec.Command(filepath.Join(root, "refresher"), args...)
		}
		cmd := exec.Command("/refresher", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: uid, Gid: uid}, Pdeathsig: syscall.SIGKILL}
		cmd.Dir = "/"
		cmd.Env = cf.Config.Env
		return cmd
	}
	t.Logf("running from the image's filesystem (chroot as user %d: %v)", uid, chroot)

	if v, err := command("--version").Output(); err != nil || string(v) != "refresher 0.1.0\n" {
		t.Fatalf("--version: %q %v", v, err)
	}

	// --demo on free ports, its store in the image's /data.
	store, conf := "/data/nats", "/etc/tokenbus/demo.yaml"
	if !chroot {
		store, conf = filepath.Join(root, "data", "nats"), filepath.Join(root, conf)
	}
	cfg := fmt.Sprintf(`nats: {embedded: {listen: "127.0.0.1:0", store_dir: %q}}
http: {listen: "127.0.0.1:0"}
providers:
  - {name: daraja-sandbox, kind: daraja, base_url: "${TOKENBUS_SIMULATOR_URL}", consumer_key: sim-consumer-key, consumer_secret: sim-consumer-secret}
`, store)
	if err := os.WriteFile(filepath.Join(root, "etc", "tokenbus", "demo.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	demo := command("--demo", "--config", conf, "--simulator-listen", "127.0.0.1:0")
	stdout, err := demo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncWriter{}
	demo.Stderr = logs
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- demo.Wait() }()
	t.Cleanup(func() {
		_ = demo.Process.Kill()
		if t.Failed() {
			t.Logf("refresher log:\n%s", logs.String())
		}
	})
	url := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`NATS:\s+(nats://\S+)`)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				url <- m[1]
			}
		}
	}()
	var natsURL string
	select {
	case natsURL = <-url:
	case err := <-done:
		t.Fatalf("refresher exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no banner within 30 s")
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg, err := nc.Request("token.get.daraja-sandbox", nil, time.Second)
		if err == nil && msg.Header.Get("Nats-Service-Error-Code") == "" && json.Unmarshal(msg.Data, &tok) == nil && tok.AccessToken != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no token within 30 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	nc.Close()
	_ = demo.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("still running 15 s after SIGTERM")
	}
}

// unpack writes the flattened filesystem r into root, with the owners the
// image gives when running as root.
func unpack(t *testing.T, r io.ReadCloser, root string) {
	t.Helper()
	defer r.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600); err == nil {
				_, err = io.Copy(f, tr)
				err = errors.Join(err, f.Close())
			}
		default:
			t.Fatalf("unexpected entry %s of type %c", h.Name, h.Typeflag)
		}
		if err == nil {
			err = os.Chmod(p, os.FileMode(h.Mode).Perm()|mode(h.Mode))
		}
		if err == nil && os.Geteuid() == 0 {
			err = os.Lchown(p, h.Uid, h.Gid)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// mode returns the sticky bit of a tar mode as an os.FileMode.
func mode(m int64) os.FileMode {
	if m&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

// syncWriter is a strings.Builder safe for concurrent use (exec copies
// stderr from its own goroutine).
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
