package interop

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// probeNotServing is grpc-health-probe's exit code when the RPC succeeded but
// the status is not SERVING (its README, "Exit codes").
const probeNotServing = 4

// probe runs grpc-health-probe as a Kubernetes exec probe would and returns
// its exit code.
func probe(t *testing.T, addr, service string) int {
	t.Helper()
	bin := os.Getenv("GRPC_HEALTH_PROBE")
	if bin == "" {
		t.Fatal("GRPC_HEALTH_PROBE is not set: run tests/interop/go/run, or set it to grpc-health-probe")
	}
	args := []string{"-addr=" + addr}
	if service != "" {
		args = append(args, "-service="+service)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && ctx.Err() == nil:
		return exit.ExitCode()
	default:
		t.Fatalf("grpc-health-probe %v: %v\n%s", args, err, out)
		return -1
	}
}

// probeUntil runs the probe until done accepts its exit code, for at most
// readyTimeout, and returns that code.
func probeUntil(t *testing.T, addr, service string, done func(code int) bool) int {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		code := probe(t, addr, service)
		if done(code) {
			return code
		}
		if time.Now().After(deadline) {
			t.Fatalf("grpc-health-probe -service=%q still exits %d after %v", service, code, readyTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func serving(code int) bool    { return code == 0 }
func notServing(code int) bool { return code != 0 }

func TestProbeServing(t *testing.T) {
	s := startServer(t)

	for _, service := range []string{"", serviceName} {
		probeUntil(t, s.addr, service, serving)
	}
}

func TestProbeFailsDuringShutdownDelay(t *testing.T) {
	s := startServer(t, "--shutdown-delay", "5s")
	probeUntil(t, s.addr, "", serving)

	s.terminate(t)

	// The delay keeps the server answering, NOT_SERVING, so Kubernetes takes
	// the pod out of its Service before connections close.
	for _, service := range []string{"", serviceName} {
		if code := probeUntil(t, s.addr, service, notServing); code != probeNotServing {
			t.Errorf("grpc-health-probe -service=%q during shutdown exited %d, want %d", service, code, probeNotServing)
		}
	}
	s.stop(t)
}

func TestProbeFailsUntilStorageWritable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a read-only bind mount is the only way to deny root writes")
	}
	dir := t.TempDir()
	for _, sub := range []string{"runs", "tasks"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := mount("--bind", dir, dir); err != nil {
		t.Skipf("cannot bind-mount the data dir: %v", err)
	}
	t.Cleanup(func() {
		if err := run("umount", dir); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	if err := mount("-o", "remount,ro,bind", dir); err != nil {
		t.Skipf("cannot remount the data dir read-only: %v", err)
	}

	s := startServerIn(t, dir, "--health-interval", "200ms")

	code := probeUntil(t, s.addr, "", notServing)
	if code != probeNotServing {
		t.Fatalf("grpc-health-probe on read-only storage exited %d, want %d", code, probeNotServing)
	}
	// Not just the start-up window: it stays NOT_SERVING across several
	// storage probes while the data dir refuses writes.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if code := probe(t, s.addr, ""); code != probeNotServing {
			t.Fatalf("grpc-health-probe on read-only storage exited %d, want %d", code, probeNotServing)
		}
	}

	if err := mount("-o", "remount,rw,bind", dir); err != nil {
		t.Fatal(err)
	}
	probeUntil(t, s.addr, "", serving)
	probeUntil(t, s.addr, serviceName, serving)
}

func mount(args ...string) error { return run("mount", args...) }

// run runs a short system command, reporting its output on failure.
func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}
