// Package interop shows how a Go orchestrator records a finished run in
// runstore, reads a task's history back and follows the change feed, and
// tests that against the real server binary.
package interop

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/status"

	pb "runstore.dev/interop/gen/persistencev1"
)

// WriteError reports a CompleteRun call that succeeded as a call but left a
// record unwritten. Status is the server's primary_error: the write to act
// on (the manifest's when both failed).
type WriteError struct {
	Outcome  pb.Outcome
	Status   *pb.WriteStatus
	Attempts int // calls made, the first included
}

func (e *WriteError) Error() string {
	return fmt.Sprintf("runstore: %s after %d attempt(s) (%s write %s: %s, location %s)",
		e.Outcome, e.Attempts, e.Status.GetTarget(), e.Status.GetCode(), e.Status.GetMessage(),
		e.Status.GetLocation())
}

// Retryable reports whether repeating the same CompleteRun may succeed. Retries
// are safe: the same ids replace the snapshot entry and rewrite the manifest.
func (e *WriteError) Retryable() bool { return e.Status.GetRetryable() }

// CompleteRun durably records a finished run in one call: its snapshot entry
// and its manifest. A failed call returns the gRPC error (inspect it with
// status.Code); a call whose writes did not all succeed returns the response
// together with a *WriteError.
func CompleteRun(ctx context.Context, client pb.PersistenceServiceClient,
	taskID, runID string, finishedAt time.Time, summaryJSON []byte) (*pb.CompleteRunResponse, error) {
	resp, err := client.CompleteRun(ctx, &pb.CompleteRunRequest{
		TaskId:      taskID,
		RunId:       runID,
		Timestamp:   finishedAt.UTC().Format(time.RFC3339Nano),
		SummaryJson: string(summaryJSON),
	})
	if err != nil {
		return nil, err
	}
	if p := resp.GetPrimaryError(); p != nil {
		return resp, &WriteError{Outcome: resp.GetOutcome(), Status: p, Attempts: 1}
	}
	return resp, nil
}

// RecordDeadline bounds RecordRun: every attempt and every wait between them.
const RecordDeadline = 30 * time.Second

// RecordRun is an orchestrator's end-of-run step: it records the run within
// RecordDeadline, retrying as DefaultRetry says while runstore reports a
// retryable write failure, and returns the error to alert on when the run
// could not be persisted.
func RecordRun(ctx context.Context, client pb.PersistenceServiceClient,
	taskID, runID string, finishedAt time.Time, summaryJSON []byte) error {
	ctx, cancel := context.WithTimeout(ctx, RecordDeadline)
	defer cancel()
	_, err := CompleteRunWithRetry(ctx, client, taskID, runID, finishedAt, summaryJSON, DefaultRetry)
	if err != nil {
		return fmt.Errorf("run %s/%s not persisted: %w", taskID, runID, err)
	}
	return nil
}

// Retry says how CompleteRunWithRetry spaces its attempts.
type Retry struct {
	Attempts  int           // calls at most, the first included
	BaseDelay time.Duration // wait before the second call; doubles for each further one
	MaxDelay  time.Duration // longest wait
	// Sleep waits d, or returns ctx.Err() if ctx ends first; nil: a timer.
	// Tests replace it to watch the waits.
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultRetry makes up to 5 calls, waiting about 0.2, 0.4, 0.8 and 1.6 s.
var DefaultRetry = Retry{Attempts: 5, BaseDelay: 200 * time.Millisecond, MaxDelay: 5 * time.Second}

// CompleteRunWithRetry records a finished run, calling CompleteRun again with
// the same ids (a retry replaces the snapshot entry and rewrites the
// manifest; nothing is recorded twice) while primary_error says a retry may
// succeed. Waits double from BaseDelay up to MaxDelay, each jittered to
// between half and all of that, so callers that failed together do not
// retry together.
//
// ctx's deadline bounds every attempt and every wait: give it one. The
// error is the one to alert on: a call's gRPC error, at once (status.Code:
// InvalidArgument, DeadlineExceeded, Unavailable, ...), or the last
// *WriteError when it is not retryable, the attempts are used up, or the
// next attempt would start after the deadline.
func CompleteRunWithRetry(ctx context.Context, client pb.PersistenceServiceClient,
	taskID, runID string, finishedAt time.Time, summaryJSON []byte, r Retry) (*pb.CompleteRunResponse, error) {
	sleep := r.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	delay := min(r.BaseDelay, r.MaxDelay)
	for attempt := 1; ; attempt++ {
		resp, err := CompleteRun(ctx, client, taskID, runID, finishedAt, summaryJSON)
		var writeErr *WriteError
		if !errors.As(err, &writeErr) {
			return resp, err // written, or the call failed
		}
		writeErr.Attempts = attempt
		wait := delay/2 + rand.N(delay/2+1)
		deadline, hasDeadline := ctx.Deadline()
		if !writeErr.Retryable() || attempt >= r.Attempts || hasDeadline && time.Until(deadline) <= wait {
			return resp, err // given up
		}
		if err := sleep(ctx, wait); err != nil {
			return resp, errors.Join(writeErr, err)
		}
		delay = min(2*delay, r.MaxDelay)
	}
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PageTimeout bounds each GetTaskSnapshot call of Runs.
const PageTimeout = 10 * time.Second

// Runs reads a task's whole history, oldest first: one GetTaskSnapshot call
// of at most pageSize runs per page (0: the server's default, 100), each
// within PageTimeout, asking for the next page with next_page_token until
// it is empty. A failed call ends the sequence with its error (NotFound:
// the task has no recorded runs).
//
//	for run, err := range interop.Runs(ctx, client, taskID, 100) {
//		if err != nil {
//			return err
//		}
//		fmt.Println(run.GetRunId(), run.GetTimestamp())
//	}
func Runs(ctx context.Context, client pb.PersistenceServiceClient,
	taskID string, pageSize uint32) iter.Seq2[*pb.RunEntry, error] {
	return func(yield func(*pb.RunEntry, error) bool) {
		pageToken := ""
		for {
			pageCtx, cancel := context.WithTimeout(ctx, PageTimeout)
			page, err := client.GetTaskSnapshot(pageCtx, &pb.GetTaskSnapshotRequest{
				TaskId: taskID, PageSize: pageSize, PageToken: pageToken,
			})
			cancel()
			if err != nil {
				yield(nil, err)
				return
			}
			for _, run := range page.GetRuns() {
				if !yield(run, nil) {
					return
				}
			}
			if pageToken = page.GetNextPageToken(); pageToken == "" {
				return
			}
		}
	}
}

// WatchStartTimeout bounds Watch's wait for the server to take the call.
const WatchStartTimeout = 10 * time.Second

// ErrNoEvent is Watcher.Next's error when no event came within its timeout;
// the stream goes on.
var ErrNoEvent = errors.New("runstore: no WatchRuns event within the timeout")

// Watcher is an open WatchRuns stream whose every read has a bound: a
// goroutine receives the events and Next waits for one at most its timeout.
type Watcher struct {
	cancel context.CancelFunc
	events chan *pb.RunEvent
	done   chan struct{} // closed once the stream has ended
	err    error         // the stream's end, set before done closes
}

// Watch opens the change feed of tasks whose id starts with taskPrefix
// (literal bytes; "" for all) and returns once the server has taken the call
// (its response headers), so a watch from now (after "") sees every change
// committed after Watch returns. With after, an event's cursor, it resumes
// exactly after that event. ctx bounds the whole stream (a long-lived
// watcher gives it no deadline); Close ends it. Keep the cursor of each
// event once it is handled, and resume from it after a failure.
func Watch(ctx context.Context, client pb.PersistenceServiceClient, taskPrefix, after string) (*Watcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := client.WatchRuns(ctx, &pb.WatchRunsRequest{TaskPrefix: taskPrefix, After: after})
	if err != nil {
		cancel()
		return nil, err
	}
	started := make(chan error, 1)
	go func() {
		_, err := stream.Header() // a call that failed at once leaves its status to Recv
		started <- err
	}()
	timer := time.NewTimer(WatchStartTimeout)
	defer timer.Stop()
	select {
	case err := <-started:
		if err != nil {
			cancel()
			return nil, err
		}
	case <-timer.C:
		cancel()
		return nil, fmt.Errorf("runstore: WatchRuns not started within %v", WatchStartTimeout)
	}
	w := &Watcher{cancel: cancel, events: make(chan *pb.RunEvent), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				w.err = err
				return
			}
			select {
			case w.events <- resp.GetEvent():
			case <-ctx.Done():
				w.err = status.FromContextError(ctx.Err()).Err()
				return
			}
		}
	}()
	return w, nil
}

// Next returns the next event, waiting at most timeout: ErrNoEvent when none
// came (the stream goes on), the stream's gRPC error once it has ended
// (status.Code: InvalidArgument for a malformed cursor, OutOfRange when
// events after it were pruned, Aborted for a watcher that fell behind and
// Unavailable at server shutdown, both with the cursor to resume after in
// the message; Canceled after Close).
func (w *Watcher) Next(timeout time.Duration) (*pb.RunEvent, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case event := <-w.events:
		return event, nil
	case <-w.done:
		return nil, w.err
	case <-timer.C:
		return nil, ErrNoEvent
	}
}

// Take returns the next n events, all within timeout.
func (w *Watcher) Take(n int, timeout time.Duration) ([]*pb.RunEvent, error) {
	deadline := time.Now().Add(timeout)
	events := make([]*pb.RunEvent, 0, n)
	for len(events) < n {
		event, err := w.Next(time.Until(deadline))
		if err != nil {
			return events, err
		}
		events = append(events, event)
	}
	return events, nil
}

// Close cancels the stream, waits for its goroutine and returns how the
// stream ended: a Canceled status for a watch closed here.
func (w *Watcher) Close() error {
	w.cancel()
	<-w.done
	return w.err
}
