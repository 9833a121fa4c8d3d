// Command mkimage builds the refresher's OCI container image without a
// container daemon: one layer holding a static binary (build it with
// CGO_ENABLED=0), the CA certificates of the build machine and a non-root
// user, on an empty base. It writes the image as a tarball that
// `docker load`, `podman load` and `crane push` accept.
//
//	mkimage --binary bin/image/refresher --tag ghcr.io/tokenbus/refresher:0.1.0 --out bin/refresher-image.tar
//
// `go tool task image` runs it; docs/deploying.md says how to publish the
// result.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// uid is the image's user: "nonroot", as in distroless images.
const uid = 65532

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	binary := fs.String("binary", "", "the static refresher binary to put at /refresher")
	tag := fs.String("tag", "ghcr.io/tokenbus/refresher:0.1.0", "the image's name and tag")
	out := fs.String("out", "bin/refresher-image.tar", "the image tarball to write")
	certs := fs.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to copy in, for calling providers over HTTPS (empty: none)")
	arch := fs.String("arch", runtime.GOARCH, "the binary's architecture")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" {
		return errors.New("--binary is required")
	}
	ref, err := name.NewTag(*tag)
	if err != nil {
		return fmt.Errorf("--tag: %w", err)
	}
	img, err := build(*binary, *certs, *arch)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(*out, ref, img); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	d, _ := img.Digest()
	fmt.Printf("wrote %s: %s (%s)\n", *out, ref, d)
	return nil
}

// build returns the image: the layer of files, and a configuration that
// runs /refresher as the non-root user in /, where ./data/nats (the embedded
// server's default store) is /data/nats, writable by that user.
func build(binary, certs, arch string) (v1.Image, error) {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	var ca []byte
	if certs != "" {
		if ca, err = os.ReadFile(certs); err != nil {
			return nil, fmt.Errorf("--ca-certs: %w (install Debian's ca-certificates, or pass --ca-certs '')", err)
		}
	}
	layerTar, err := files(bin, ca)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()} // reproducible
	cf.Config.Entrypoint = []string{"/refresher"}
	cf.Config.Cmd = []string{"--config", "/etc/tokenbus/refresher.yaml"}
	cf.Config.User = fmt.Sprintf("%d:%d", uid, uid)
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Config.ExposedPorts = map[string]struct{}{"4222/tcp": {}, "8080/tcp": {}}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.source":      "https://github.com/tokenbus/tokenbus",
		"org.opencontainers.image.description": "tokenbus refresher: payment-provider access tokens over NATS",
	}
	return mutate.ConfigFile(img, cf)
}

// files returns the layer's tar: /refresher, the CA bundle, /etc/passwd and
// /etc/group naming the user, and the writable directories /data and /tmp.
func files(bin, ca []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dir := func(name string, mode int64, owner int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: owner, Gid: owner, ModTime: epoch})
	}
	file := func(name string, mode int64, body []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	steps := []func() error{
		func() error { return dir("etc/", 0o755, 0) },
		func() error {
			return file("etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/data:/sbin/nologin\n", uid, uid))
		},
		func() error { return file("etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", uid)) },
		func() error { return dir("etc/tokenbus/", 0o755, 0) },
		func() error { return dir("data/", 0o755, uid) },
		func() error { return dir("tmp/", 0o1777, 0) },
		func() error { return file("refresher", 0o755, bin) },
	}
	if ca != nil {
		steps = append(steps,
			func() error { return dir("etc/ssl/", 0o755, 0) },
			func() error { return dir("etc/ssl/certs/", 0o755, 0) },
			func() error { return file("etc/ssl/certs/ca-certificates.crt", 0o644, ca) })
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
