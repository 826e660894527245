package interop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "runstore.dev/interop/gen/persistencev1"
)

// TestReadmeQuotesClient: every Go block the README shows before "Running
// the tests" is client.go's code, verbatim.
func TestReadmeQuotesClient(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	source, err := os.ReadFile("client.go")
	if err != nil {
		t.Fatal(err)
	}
	calling, _, _ := strings.Cut(string(readme), "\n## Running the tests")
	blocks := regexp.MustCompile("(?ms)^```go\n(.*?)^```$").FindAllStringSubmatch(calling, -1)
	if len(blocks) < 3 {
		t.Fatalf("README shows %d Go blocks, want at least 3", len(blocks))
	}
	for _, b := range blocks {
		if !strings.Contains(string(source), b[1]) {
			t.Errorf("README block is not in client.go:\n%s", b[1])
		}
	}
	for _, fn := range []string{"func RecordRun(", "func CompleteRunWithRetry(", "func Runs("} {
		if !strings.Contains(calling, fn) {
			t.Errorf("README does not quote %s...", fn)
		}
	}
}

// recorder forwards to a real client (recording its CompleteRun replies in
// answers), or answers CompleteRun from replies (the last one repeats) when
// it has no client, and records every request with the deadline it carried.
type recorder struct {
	pb.PersistenceServiceClient
	replies []*pb.CompleteRunResponse
	answers []*pb.CompleteRunResponse

	mu        sync.Mutex
	runs      []*pb.CompleteRunRequest
	pages     []*pb.GetTaskSnapshotRequest
	deadlines []time.Time
}

func (r *recorder) note(ctx context.Context) {
	deadline, _ := ctx.Deadline() // zero when there is none
	r.deadlines = append(r.deadlines, deadline)
}

func (r *recorder) CompleteRun(ctx context.Context, req *pb.CompleteRunRequest,
	opts ...grpc.CallOption) (*pb.CompleteRunResponse, error) {
	r.mu.Lock()
	r.runs = append(r.runs, req)
	r.note(ctx)
	r.mu.Unlock()
	if r.PersistenceServiceClient != nil {
		reply, err := r.PersistenceServiceClient.CompleteRun(ctx, req, opts...)
		r.mu.Lock()
		r.answers = append(r.answers, reply)
		r.mu.Unlock()
		return reply, err
	}
	reply := r.replies[0]
	if len(r.replies) > 1 {
		r.replies = r.replies[1:]
	}
	return reply, nil
}

func (r *recorder) GetTaskSnapshot(ctx context.Context, req *pb.GetTaskSnapshotRequest,
	opts ...grpc.CallOption) (*pb.GetTaskSnapshotResponse, error) {
	r.mu.Lock()
	r.pages = append(r.pages, req)
	r.note(ctx)
	r.mu.Unlock()
	return r.PersistenceServiceClient.GetTaskSnapshot(ctx, req, opts...)
}

// failed is a reply whose manifest write failed with code.
func failed(code string, retryable bool) *pb.CompleteRunResponse {
	manifest := &pb.WriteStatus{
		Target: pb.WriteTarget_WRITE_TARGET_MANIFEST, State: pb.WriteState_WRITE_STATE_FAILED,
		Code: code, Message: "injected", Retryable: retryable, Location: "manifests/t/r",
	}
	return &pb.CompleteRunResponse{
		Snapshot: &pb.WriteStatus{
			Target: pb.WriteTarget_WRITE_TARGET_SNAPSHOT, State: pb.WriteState_WRITE_STATE_WRITTEN, Code: "OK",
		},
		Manifest: manifest, Outcome: pb.Outcome_OUTCOME_MANIFEST_FAILED, PrimaryError: manifest,
	}
}

var allWritten = &pb.CompleteRunResponse{Outcome: pb.Outcome_OUTCOME_ALL_WRITTEN}

// noSleep is a Retry for calls that must not be retried.
func noSleep(t *testing.T) Retry {
	r := DefaultRetry
	r.Sleep = func(_ context.Context, d time.Duration) error {
		t.Errorf("retried (waited %v) where it should not have", d)
		return nil
	}
	return r
}

// recording is a Retry whose waits are recorded, not slept.
func recording(r Retry, waits *[]time.Duration) Retry {
	r.Sleep = func(_ context.Context, d time.Duration) error {
		*waits = append(*waits, d)
		return nil
	}
	return r
}

func within(t *testing.T, what string, d, lo, hi time.Duration) {
	t.Helper()
	if d < lo || d > hi {
		t.Errorf("%s = %v, want within [%v, %v]", what, d, lo, hi)
	}
}

func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestRecordRunSucceedsAtOnce(t *testing.T) {
	f := loadFixture(t)
	rec := &recorder{PersistenceServiceClient: pb.NewPersistenceServiceClient(connect(t, startServer(t)))}

	start := time.Now()
	if err := RecordRun(context.Background(), rec, f.taskID, f.runID, f.finishedAt, f.raw); err != nil {
		t.Fatalf("RecordRun: %v", err)
	}
	end := time.Now()

	if len(rec.runs) != 1 {
		t.Fatalf("%d CompleteRun calls, want 1", len(rec.runs))
	}
	got := rec.runs[0]
	if got.GetTaskId() != f.taskID || got.GetRunId() != f.runID || got.GetSummaryJson() != string(f.raw) {
		t.Errorf("request = %s/%s, want %s/%s with the fixture", got.GetTaskId(), got.GetRunId(), f.taskID, f.runID)
	}
	// The call carried RecordDeadline, set between start and end.
	if d := rec.deadlines[0]; d.Before(start.Add(RecordDeadline)) || d.After(end.Add(RecordDeadline)) {
		t.Errorf("deadline %v, want RecordDeadline after the call started", d)
	}
}

func TestRetryStopsAtNonRetryableWrite(t *testing.T) {
	dir := t.TempDir()
	client := pb.NewPersistenceServiceClient(connect(t, startServerIn(t, dir)))
	// A trigger refuses the task's manifests: FAILED_PRECONDITION, not
	// retryable. The snapshot is still written.
	refuseWrites(t, dir, "manifests", "blocked")
	rec := &recorder{PersistenceServiceClient: client}

	resp, err := CompleteRunWithRetry(bounded(t), rec, "blocked", "r1", time.Now(), []byte(`{}`), noSleep(t))

	var writeErr *WriteError
	if !errors.As(err, &writeErr) {
		t.Fatalf("err = %v, want a *WriteError", err)
	}
	if writeErr.Retryable() || writeErr.Attempts != 1 || writeErr.Outcome != pb.Outcome_OUTCOME_MANIFEST_FAILED {
		t.Errorf("WriteError = %v (retryable %v), want OUTCOME_MANIFEST_FAILED, not retryable, 1 attempt",
			writeErr, writeErr.Retryable())
	}
	s := writeErr.Status
	if s.GetTarget() != pb.WriteTarget_WRITE_TARGET_MANIFEST || s.GetCode() != "FAILED_PRECONDITION" ||
		s.GetLocation() != "manifests/blocked/r1" || !strings.Contains(s.GetMessage(), "injected fault") {
		t.Errorf("primary_error = %v, want the manifest, FAILED_PRECONDITION at manifests/blocked/r1", s)
	}
	if snap := resp.GetSnapshot(); snap.GetState() != pb.WriteState_WRITE_STATE_WRITTEN ||
		snap.GetLocation() != "snapshot_entries/blocked/r1" {
		t.Errorf("snapshot = %v, want written at snapshot_entries/blocked/r1", snap)
	}
	if len(rec.runs) != 1 {
		t.Errorf("%d CompleteRun calls, want 1", len(rec.runs))
	}
}

func TestRetryStopsAtInvalidArgument(t *testing.T) {
	rec := &recorder{PersistenceServiceClient: pb.NewPersistenceServiceClient(connect(t, startServer(t)))}

	_, err := CompleteRunWithRetry(bounded(t), rec, "a/b", "r1", time.Now(), []byte(`{}`), noSleep(t))

	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "task_id") {
		t.Fatalf("err = %v, want InvalidArgument naming task_id", err)
	}
	if len(rec.runs) != 1 {
		t.Errorf("%d CompleteRun calls, want 1", len(rec.runs))
	}
}

// An already-passed deadline fails every time: grpc-go does not start the call.
func TestRecordRunPassesTheDeadline(t *testing.T) {
	f := loadFixture(t)
	rec := &recorder{PersistenceServiceClient: pb.NewPersistenceServiceClient(connect(t, startServer(t)))}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()

	err := RecordRun(ctx, rec, f.taskID, f.runID, f.finishedAt, f.raw)

	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("run %s/%s not persisted", f.taskID, f.runID)) {
		t.Errorf("err = %v, want it to name the run", err)
	}
	if len(rec.runs) != 1 {
		t.Errorf("%d CompleteRun calls, want 1", len(rec.runs))
	}
}

func TestRetryBacksOffWithTheSameRequest(t *testing.T) {
	rec := &recorder{replies: []*pb.CompleteRunResponse{
		failed("UNAVAILABLE", true), failed("RESOURCE_EXHAUSTED", true), allWritten,
	}}
	var waits []time.Duration
	r := recording(Retry{Attempts: 5, BaseDelay: 200 * time.Millisecond, MaxDelay: 5 * time.Second}, &waits)
	at := time.Date(2026, 1, 5, 19, 26, 37, 274e6, time.UTC)

	resp, err := CompleteRunWithRetry(bounded(t), rec, "t", "r", at, []byte(`{}`), r)

	if err != nil || resp != allWritten {
		t.Fatalf("= %v, %v; want the written reply", resp, err)
	}
	want := &pb.CompleteRunRequest{TaskId: "t", RunId: "r", Timestamp: "2026-01-05T19:26:37.274Z", SummaryJson: "{}"}
	if len(rec.runs) != 3 {
		t.Fatalf("%d calls, want 3", len(rec.runs))
	}
	for i, req := range rec.runs {
		if !proto.Equal(req, want) {
			t.Errorf("call %d: %v, want %v", i+1, req, want)
		}
		// One deadline, the caller's, for every attempt.
		if rec.deadlines[i].IsZero() || !rec.deadlines[i].Equal(rec.deadlines[0]) {
			t.Errorf("call %d deadline %v, want the caller's %v", i+1, rec.deadlines[i], rec.deadlines[0])
		}
	}
	// Exponential, jittered to between half and all of 200 ms, 400 ms.
	if len(waits) != 2 {
		t.Fatalf("waits = %v, want 2", waits)
	}
	within(t, "first wait", waits[0], 100*time.Millisecond, 200*time.Millisecond)
	within(t, "second wait", waits[1], 200*time.Millisecond, 400*time.Millisecond)
}

// A retryable failure from the real server: another process holds the
// database's write lock longer than --lock-timeout, so both writes fail with
// ABORTED, retryable. The lock is released during the first wait, and the
// retry writes both.
func TestRetryUntilTheLockIsReleased(t *testing.T) {
	dir := t.TempDir()
	s := startServerIn(t, dir, "--lock-timeout", "200ms")
	rec := &recorder{PersistenceServiceClient: pb.NewPersistenceServiceClient(connect(t, s))}
	release := holdWriteLock(t, dir)
	var waits []time.Duration
	r := Retry{Attempts: 3, BaseDelay: 50 * time.Millisecond, MaxDelay: time.Second,
		Sleep: func(_ context.Context, d time.Duration) error {
			waits = append(waits, d)
			release()
			return nil
		}}

	resp, err := CompleteRunWithRetry(bounded(t), rec, "locked", "r1", time.Now(), []byte(`{}`), r)

	if err != nil || resp.GetOutcome() != pb.Outcome_OUTCOME_ALL_WRITTEN {
		t.Fatalf("= %v, %v; want both written after the release", resp, err)
	}
	if len(rec.runs) != 2 || len(waits) != 1 {
		t.Fatalf("%d calls and waits %v, want 2 calls and 1 wait", len(rec.runs), waits)
	}
	first := rec.answers[0]
	for _, w := range []*pb.WriteStatus{first.GetSnapshot(), first.GetManifest()} {
		if w.GetState() != pb.WriteState_WRITE_STATE_FAILED || w.GetCode() != "ABORTED" || !w.GetRetryable() {
			t.Errorf("first attempt's %v = %v, want FAILED, ABORTED, retryable", w.GetTarget(), w)
		}
	}
	if first.GetOutcome() != pb.Outcome_OUTCOME_NONE_WRITTEN ||
		first.GetPrimaryError().GetTarget() != pb.WriteTarget_WRITE_TARGET_MANIFEST {
		t.Errorf("first attempt = %v, want OUTCOME_NONE_WRITTEN with the manifest's error", first)
	}
	if loc := resp.GetManifest().GetLocation(); loc != "manifests/locked/r1" {
		t.Errorf("manifest location = %q, want manifests/locked/r1", loc)
	}
}

func TestRetryGivesUpAfterItsAttempts(t *testing.T) {
	rec := &recorder{replies: []*pb.CompleteRunResponse{failed("UNAVAILABLE", true)}}
	var waits []time.Duration
	r := recording(Retry{Attempts: 4, BaseDelay: 200 * time.Millisecond, MaxDelay: 300 * time.Millisecond}, &waits)

	_, err := CompleteRunWithRetry(bounded(t), rec, "t", "r", time.Now(), []byte(`{}`), r)

	var writeErr *WriteError
	if !errors.As(err, &writeErr) || !writeErr.Retryable() || writeErr.Attempts != 4 {
		t.Fatalf("err = %v, want a retryable *WriteError after 4 attempts", err)
	}
	if len(rec.runs) != 4 || len(waits) != 3 {
		t.Fatalf("%d calls and waits %v, want 4 calls and 3 waits", len(rec.runs), waits)
	}
	within(t, "first wait", waits[0], 100*time.Millisecond, 200*time.Millisecond)
	for _, w := range waits[1:] {
		within(t, "capped wait", w, 150*time.Millisecond, 300*time.Millisecond)
	}
}

func TestRetryGivesUpWhenTheNextAttemptWouldMissTheDeadline(t *testing.T) {
	rec := &recorder{replies: []*pb.CompleteRunResponse{failed("UNAVAILABLE", true)}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r := noSleep(t)
	r.BaseDelay, r.MaxDelay = 10*time.Second, 10*time.Second

	_, err := CompleteRunWithRetry(ctx, rec, "t", "r", time.Now(), []byte(`{}`), r)

	var writeErr *WriteError
	if !errors.As(err, &writeErr) || !writeErr.Retryable() || len(rec.runs) != 1 {
		t.Fatalf("err = %v after %d calls, want the retryable *WriteError after 1", err, len(rec.runs))
	}
}

func TestRunsReadsEveryPageInOrder(t *testing.T) {
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))
	const task = "paged"
	base := time.Date(2026, 1, 5, 19, 26, 30, 0, time.UTC)
	for _, i := range []int{3, 0, 4, 1, 2} { // recorded out of order; read back by timestamp
		run := fmt.Sprintf("run-%d", i)
		summary, _ := json.Marshal(map[string]string{"taskId": task, "runId": run})
		at := base.Add(time.Duration(i) * time.Second)
		if err := RecordRun(context.Background(), client, task, run, at, summary); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recorder{PersistenceServiceClient: client}

	var got []string
	for run, err := range Runs(context.Background(), rec, task, 2) {
		if err != nil {
			t.Fatalf("Runs: %v", err)
		}
		got = append(got, run.GetRunId()+" "+run.GetTimestamp())
		if len(got) == 10 { // a client that lost its page token would repeat page 1 forever
			break
		}
	}

	var want []string
	for i := range 5 {
		at := base.Add(time.Duration(i) * time.Second)
		want = append(want, fmt.Sprintf("run-%d %s", i, at.Format(time.RFC3339Nano)))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("runs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(rec.pages) != 3 {
		t.Fatalf("%d GetTaskSnapshot calls, want 3 pages", len(rec.pages))
	}
	tokens := map[string]bool{}
	for i, p := range rec.pages {
		if p.GetPageSize() != 2 || (i == 0) != (p.GetPageToken() == "") || tokens[p.GetPageToken()] {
			t.Errorf("page %d request = %v, want page_size 2 and a fresh token after the first", i+1, p)
		}
		tokens[p.GetPageToken()] = true
		if rec.deadlines[i].IsZero() {
			t.Errorf("page %d had no deadline", i+1)
		}
	}
}

func TestRunsOfAnUnknownTaskIsNotFound(t *testing.T) {
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))
	for _, err := range Runs(context.Background(), client, "never-ran", 0) {
		if status.Code(err) != codes.NotFound {
			t.Fatalf("err = %v, want NotFound", err)
		}
		return
	}
	t.Fatal("Runs yielded nothing, want a NotFound error")
}
