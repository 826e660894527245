package interop

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "runstore.dev/interop/gen/persistencev1"
)

const (
	serviceName  = "orchestrator.persistence.v1.PersistenceService"
	fixtureStamp = "2026-01-05T19:26:37.274Z"
	readyTimeout = 10 * time.Second
	exitTimeout  = 30 * time.Second
)

// server is one runstore process started by the test.
type server struct {
	addr    string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process has exited
	waitErr error         // cmd.Wait's result, set before exited closes
	sigOnce sync.Once
	output  logBuffer
}

// startServer runs the real binary on 127.0.0.1:0 with a fresh data dir and
// returns once it listens; cleanup stops it with SIGTERM and expects exit 0.
func startServer(t *testing.T, extraArgs ...string) *server {
	t.Helper()
	return startServerIn(t, t.TempDir(), extraArgs...)
}

func startServerIn(t *testing.T, dataDir string, extraArgs ...string) *server {
	t.Helper()
	bin := os.Getenv("RUNSTORE_BIN")
	if bin == "" {
		t.Fatal("RUNSTORE_BIN is not set: run tests/interop/go/run, or set it to the server binary")
	}
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"}, extraArgs...)
	s := &server{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	s.cmd.Stderr = &s.output
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}

	// Read JSON log lines until "listening", then keep draining so the server
	// never blocks on a full pipe; Wait only after the last read.
	listening := make(chan string, 1)
	go func() {
		lines := bufio.NewScanner(stdout)
		for lines.Scan() {
			s.output.Write(append(lines.Bytes(), '\n'))
			var entry struct {
				Message string `json:"message"`
				Addr    string `json:"addr"`
			}
			if json.Unmarshal(lines.Bytes(), &entry) == nil && entry.Message == "listening" {
				select {
				case listening <- entry.Addr:
				default:
				}
			}
		}
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()

	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("server output:\n%s", s.output.String())
		}
	})
	select {
	case s.addr = <-listening:
	case <-s.exited:
		t.Fatalf("server exited before listening: %v\n%s", s.waitErr, s.output.String())
	case <-time.After(readyTimeout):
		t.Fatalf("server did not log \"listening\" within %v", readyTimeout)
	}
	return s
}

// terminate sends SIGTERM once; later calls do nothing.
func (s *server) terminate(t *testing.T) {
	s.sigOnce.Do(func() {
		if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("SIGTERM: %v", err)
		}
	})
}

// stop sends SIGTERM (if not sent yet) and expects exit code 0 within exitTimeout.
func (s *server) stop(t *testing.T) {
	t.Helper()
	s.terminate(t)
	select {
	case <-s.exited:
		if s.waitErr != nil {
			t.Errorf("server did not exit cleanly after SIGTERM: %v", s.waitErr)
		}
	case <-time.After(exitTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
		t.Errorf("server did not exit within %v of SIGTERM", exitTimeout)
	}
}

// logBuffer collects the server's output for failure reports.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// connect dials the server and waits until it is ready: the persistence
// service's health SERVING.
func connect(t *testing.T, s *server) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	waitServing(t, healthpb.NewHealthClient(conn), serviceName)
	return conn
}

// waitServing watches the health of service until it is SERVING; readiness
// (the persistence service) starts NOT_SERVING until the first storage probe
// write succeeds, liveness ("") is SERVING from the start.
func waitServing(t *testing.T, health healthpb.HealthClient, service string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health watch %q: %v", service, err)
	}
	for {
		resp, err := watch.Recv()
		if err != nil {
			t.Fatalf("health of %q never became SERVING: %v", service, err)
		}
		if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
	}
}

// fixture is tests/fixtures/run-summary.json.
type fixture struct {
	raw           []byte
	taskID, runID string
	finishedAt    time.Time
}

func loadFixture(t *testing.T) fixture {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "fixtures", "run-summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ids struct {
		TaskID string `json:"taskId"`
		RunID  string `json:"runId"`
	}
	if err := json.Unmarshal(raw, &ids); err != nil {
		t.Fatal(err)
	}
	at, err := time.Parse(time.RFC3339Nano, fixtureStamp)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{raw: raw, taskID: ids.TaskID, runID: ids.RunID, finishedAt: at}
}

// record stores the fixture through the example client and expects both writes.
func record(t *testing.T, client pb.PersistenceServiceClient, f fixture) *pb.CompleteRunResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	resp, err := CompleteRun(ctx, client, f.taskID, f.runID, f.finishedAt, f.raw)
	if err != nil {
		t.Fatalf("CompleteRun: %v", err)
	}
	return resp
}

func TestCompleteRunWritesBoth(t *testing.T) {
	f := loadFixture(t)
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))

	resp := record(t, client, f)

	if resp.GetOutcome() != pb.Outcome_OUTCOME_ALL_WRITTEN {
		t.Errorf("outcome = %v, want OUTCOME_ALL_WRITTEN", resp.GetOutcome())
	}
	for _, w := range []*pb.WriteStatus{resp.GetSnapshot(), resp.GetManifest()} {
		if w.GetState() != pb.WriteState_WRITE_STATE_WRITTEN || w.GetCode() != "OK" {
			t.Errorf("%v write: state %v, code %q; want WRITE_STATE_WRITTEN, OK", w.GetTarget(), w.GetState(), w.GetCode())
		}
	}
	if resp.PrimaryError != nil {
		t.Errorf("primary_error = %v, want unset", resp.PrimaryError)
	}
	if got := resp.GetManifest().GetBytes(); got != uint64(len(f.raw)) {
		t.Errorf("manifest bytes = %d, want %d", got, len(f.raw))
	}
}

func TestGetManifestReturnsBytesAsSent(t *testing.T) {
	f := loadFixture(t)
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))
	record(t, client, f)

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	m, err := client.GetManifest(ctx, &pb.GetManifestRequest{TaskId: f.taskID, RunId: f.runID})
	if err != nil {
		t.Fatalf("GetManifest: %v", err)
	}

	if m.GetSummaryJson() != string(f.raw) {
		t.Fatalf("summary_json differs from the fixture (%d bytes, want %d)", len(m.GetSummaryJson()), len(f.raw))
	}
	sum := sha256.Sum256(f.raw)
	if m.GetSha256() != hex.EncodeToString(sum[:]) {
		t.Errorf("sha256 = %s, want %x", m.GetSha256(), sum)
	}
	if !strings.Contains(m.GetSummaryJson(), "ünïcödé") {
		t.Error("summary_json lost the non-ASCII text")
	}
	// An integer above 2^53 would lose precision if the server parsed and
	// re-encoded the JSON as doubles; it must come back literally.
	literal := beyondFloat64(string(f.raw))
	if literal == "" {
		t.Fatal("fixture has no integer above 2^53")
	}
	if !strings.Contains(m.GetSummaryJson(), literal) {
		t.Errorf("integer %s did not survive literally", literal)
	}
}

// beyondFloat64 returns the first integer literal in text above 2^53, or "".
func beyondFloat64(text string) string {
	limit := new(big.Int).Lsh(big.NewInt(1), 53)
	for _, digits := range regexp.MustCompile(`\d{16,}`).FindAllString(text, -1) {
		if n, ok := new(big.Int).SetString(digits, 10); ok && n.Cmp(limit) > 0 {
			return digits
		}
	}
	return ""
}

func TestGetTaskSnapshotListsRun(t *testing.T) {
	f := loadFixture(t)
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))
	record(t, client, f)

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	snap, err := client.GetTaskSnapshot(ctx, &pb.GetTaskSnapshotRequest{TaskId: f.taskID})
	if err != nil {
		t.Fatalf("GetTaskSnapshot: %v", err)
	}

	if snap.GetLastRunAt() != fixtureStamp {
		t.Errorf("last_run_at = %q, want %q", snap.GetLastRunAt(), fixtureStamp)
	}
	runs := snap.GetRuns()
	if len(runs) != 1 || runs[0].GetRunId() != f.runID || runs[0].GetTimestamp() != fixtureStamp {
		t.Errorf("runs = %v, want one entry %s at %s", runs, f.runID, fixtureStamp)
	}
}

func TestInvalidTaskIDIsRejected(t *testing.T) {
	f := loadFixture(t)
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	_, err := CompleteRun(ctx, client, "../escape", f.runID, f.finishedAt, []byte(`{}`))

	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("CompleteRun(task_id \"../escape\") = %v, want InvalidArgument", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "task_id") {
		t.Errorf("message %q does not name task_id", msg)
	}
	record(t, client, f) // the server still serves valid calls
}

func TestHealthCheckServing(t *testing.T) {
	health := healthpb.NewHealthClient(connect(t, startServer(t)))

	for _, service := range []string{"", serviceName} {
		waitServing(t, health, service)
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, %v; want SERVING", service, resp.GetStatus(), err)
		}
	}
}
