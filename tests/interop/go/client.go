// Package interop shows how a Go orchestrator records a finished run in
// runstore, and tests that against the real server binary.
package interop

import (
	"context"
	"fmt"
	"time"

	pb "runstore.dev/interop/gen/persistencev1"
)

// WriteError reports a CompleteRun call that succeeded as a call but left a
// record unwritten. Status is the server's primary_error: the write to act
// on (the manifest's when both failed).
type WriteError struct {
	Outcome pb.Outcome
	Status  *pb.WriteStatus
}

func (e *WriteError) Error() string {
	return fmt.Sprintf("runstore: %s (%s write %s: %s)",
		e.Outcome, e.Status.GetTarget(), e.Status.GetCode(), e.Status.GetMessage())
}

// Retryable reports whether repeating the same CompleteRun may succeed. Retries
// are safe: the same ids replace the snapshot entry and rewrite the manifest.
func (e *WriteError) Retryable() bool { return e.Status.GetRetryable() }

// CompleteRun durably records a finished run: its snapshot entry and its
// manifest. A failed call returns the gRPC error (inspect it with
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
		return resp, &WriteError{Outcome: resp.GetOutcome(), Status: p}
	}
	return resp, nil
}
