package interop

import (
	"context"
	"errors"
	"os"
	"os/exec"
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

// Readiness follows storage, liveness does not: while another process holds
// the database's write lock longer than --lock-timeout, the storage probe's
// write fails, so the persistence service is NOT_SERVING (the pod leaves its
// Service) while "" stays SERVING (it is not restarted); both are SERVING
// again once the lock is released.
func TestProbeFailsUntilStorageWritable(t *testing.T) {
	dir := t.TempDir()
	s := startServerIn(t, dir, "--lock-timeout", "200ms", "--health-interval", "200ms")
	probeUntil(t, s.addr, serviceName, serving)

	release := holdWriteLock(t, dir)

	code := probeUntil(t, s.addr, serviceName, notServing)
	if code != probeNotServing {
		t.Fatalf("grpc-health-probe -service=%s with the lock held exited %d, want %d", serviceName, code, probeNotServing)
	}
	// Not one failed probe: it stays NOT_SERVING across several storage
	// probes while the lock is held, and liveness stays SERVING throughout.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if code := probe(t, s.addr, serviceName); code != probeNotServing {
			t.Fatalf("grpc-health-probe -service=%s with the lock held exited %d, want %d", serviceName, code, probeNotServing)
		}
		if code := probe(t, s.addr, ""); code != 0 {
			t.Fatalf("grpc-health-probe -service=\"\" (liveness) with the lock held exited %d, want 0", code)
		}
	}

	release()
	probeUntil(t, s.addr, serviceName, serving)
	if code := probe(t, s.addr, ""); code != 0 {
		t.Errorf("grpc-health-probe -service=\"\" (liveness) after the release exited %d, want 0", code)
	}
}
