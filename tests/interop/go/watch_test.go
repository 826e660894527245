package interop

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "runstore.dev/interop/gen/persistencev1"
)

const (
	watchWait    = 30 * time.Second       // for the events a test expects
	quietWait    = 500 * time.Millisecond // in which no further event may arrive
	streamBudget = 60 * time.Second       // the deadline of each WatchRuns stream
)

// watched is what a test compares of an event.
type watched struct {
	kind          pb.RunEventKind
	taskID, runID string
	timestamp     string
}

func (w watched) String() string {
	return fmt.Sprintf("%v %s/%s at %s", w.kind, w.taskID, w.runID, w.timestamp)
}

func summarise(events []*pb.RunEvent) []watched {
	out := make([]watched, len(events))
	for i, e := range events {
		out[i] = watched{e.GetKind(), e.GetTaskId(), e.GetRunId(), e.GetTimestamp()}
	}
	return out
}

func sameEvents(t *testing.T, what string, got, want []watched) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s:\n got %v\nwant %v", what, got, want)
	}
}

// expectQuiet fails when w delivers another event within quietWait.
func expectQuiet(t *testing.T, w *Watcher) {
	t.Helper()
	if event, err := w.Next(quietWait); !errors.Is(err, ErrNoEvent) {
		t.Fatalf("after the expected events: %v, %v; want no further event", event, err)
	}
}

// closeCancelled closes w and expects it to end Canceled.
func closeCancelled(t *testing.T, w *Watcher) {
	t.Helper()
	if err := w.Close(); status.Code(err) != codes.Canceled {
		t.Fatalf("closed watch ended with %v, want Canceled", err)
	}
}

func uniquePrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "go-watch-" + hex.EncodeToString(b) + "-"
}

func TestWatchRunsFollowsChangesInCommitOrderAndResumesAfterACursor(t *testing.T) {
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))
	prefix := uniquePrefix(t)
	task := prefix + "task"
	other := prefix[:len(prefix)-1] + "_other" // all of the prefix but its last byte: outside it
	at1 := time.Date(2026, 1, 5, 19, 26, 37, 274_000_000, time.UTC)
	at2 := time.Date(2026, 1, 5, 19, 30, 0, 0, time.UTC)
	stamp := func(at time.Time) string { return at.UTC().Format(time.RFC3339Nano) } // as CompleteRun sends it

	ctx, cancel := context.WithTimeout(context.Background(), streamBudget)
	defer cancel()
	// From now: Watch returns once the server has taken the call.
	watch, err := Watch(ctx, client, prefix, "")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer watch.Close()

	for _, r := range []struct {
		task, run string
		at        time.Time
	}{{task, "r1", at1}, {task, "r2", at2}, {other, "r1", at1}} {
		callCtx, callCancel := context.WithTimeout(ctx, readyTimeout)
		_, err := CompleteRun(callCtx, client, r.task, r.run, r.at,
			[]byte(fmt.Sprintf(`{"taskId":%q,"runId":%q}`, r.task, r.run)))
		callCancel()
		if err != nil {
			t.Fatalf("CompleteRun %s/%s: %v", r.task, r.run, err)
		}
	}
	callCtx, callCancel := context.WithTimeout(ctx, readyTimeout)
	deleted, err := client.DeleteRun(callCtx, &pb.DeleteRunRequest{TaskId: task, RunId: "r1"})
	callCancel()
	if err != nil {
		t.Fatalf("DeleteRun: %v", err)
	}
	if deleted.GetOutcome() != pb.Outcome_OUTCOME_ALL_WRITTEN || !deleted.GetFound() {
		t.Fatalf("DeleteRun = %v, found %v; want OUTCOME_ALL_WRITTEN, found", deleted.GetOutcome(), deleted.GetFound())
	}

	events, err := watch.Take(3, watchWait)
	if err != nil {
		t.Fatalf("after %d of 3 events (%v): %v", len(events), summarise(events), err)
	}
	expectQuiet(t, watch) // exactly three: nothing of the other task
	closeCancelled(t, watch)

	sameEvents(t, "events", summarise(events), []watched{
		{pb.RunEventKind_RUN_EVENT_KIND_COMPLETED, task, "r1", stamp(at1)},
		{pb.RunEventKind_RUN_EVENT_KIND_COMPLETED, task, "r2", stamp(at2)},
		{pb.RunEventKind_RUN_EVENT_KIND_DELETED, task, "r1", stamp(at1)},
	})
	cursors := map[string]bool{}
	for _, e := range events {
		if e.GetCursor() == "" {
			t.Errorf("%v has no cursor", e)
		}
		cursors[e.GetCursor()] = true
		if _, err := time.Parse(time.RFC3339Nano, e.GetRecordedAt()); err != nil {
			t.Errorf("recorded_at %q: %v", e.GetRecordedAt(), err)
		}
	}
	if len(cursors) != 3 {
		t.Errorf("cursors %v are not distinct", cursors)
	}

	// Resumed exactly after the first event: the second and the third.
	resumed, err := Watch(ctx, client, prefix, events[0].GetCursor())
	if err != nil {
		t.Fatalf("Watch after %q: %v", events[0].GetCursor(), err)
	}
	defer resumed.Close()
	again, err := resumed.Take(2, watchWait)
	if err != nil {
		t.Fatalf("resumed: after %d of 2 events (%v): %v", len(again), summarise(again), err)
	}
	expectQuiet(t, resumed)
	closeCancelled(t, resumed)
	sameEvents(t, "resumed events", summarise(again), summarise(events[1:]))
	for i, e := range again {
		if e.GetCursor() != events[i+1].GetCursor() {
			t.Errorf("resumed event %d cursor %q, want %q", i, e.GetCursor(), events[i+1].GetCursor())
		}
	}
}
