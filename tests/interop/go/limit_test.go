package interop

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "runstore.dev/interop/gen/persistencev1"
)

// defaultMaxSummaryBytes is the server's default --max-summary-bytes:
// 4 MiB − 64 KiB, so that a manifest at the limit, and a snapshot page
// holding it, fit the 4 MiB default receive limit of gRPC clients.
const defaultMaxSummaryBytes = 4*1024*1024 - 64*1024

// grpcGoDefaultRecvBytes is grpc-go's default receive limit (4 MiB).
const grpcGoDefaultRecvBytes = 4 * 1024 * 1024

// summaryOfSize is a JSON object of exactly size bytes that carries the ids:
// {"taskId":…,"runId":…,"padding":"xxx…"}.
func summaryOfSize(t *testing.T, taskID, runID string, size int) []byte {
	t.Helper()
	head := fmt.Sprintf(`{"taskId":%q,"runId":%q,"padding":"`, taskID, runID)
	const tail = `"}`
	pad := size - len(head) - len(tail)
	if pad < 0 {
		t.Fatalf("no %d-byte summary holds the ids", size)
	}
	return []byte(head + strings.Repeat("x", pad) + tail)
}

// TestLargestSummaryReadsBackWithDefaultLimits: a summary of exactly the
// server's default limit (4,128,768 bytes) is written and reads back byte
// for byte through GetManifest and GetTaskSnapshot; one byte more is
// RESOURCE_EXHAUSTED and writes nothing. The client is connect's: grpc-go at
// its default limits (no MaxCallRecvMsgSize: 4 MiB receive; send
// effectively unlimited), and the server runs with its default
// --max-summary-bytes (no extra arguments).
func TestLargestSummaryReadsBackWithDefaultLimits(t *testing.T) {
	client := pb.NewPersistenceServiceClient(connect(t, startServer(t)))
	const task = "go-largest"
	at := loadFixture(t).finishedAt
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	summary := summaryOfSize(t, task, "at-limit", defaultMaxSummaryBytes)
	resp, err := CompleteRun(ctx, client, task, "at-limit", at, summary)
	if err != nil {
		t.Fatalf("CompleteRun of a %d-byte summary: %v", len(summary), err)
	}
	for _, w := range []*pb.WriteStatus{resp.GetSnapshot(), resp.GetManifest()} {
		if w.GetState() != pb.WriteState_WRITE_STATE_WRITTEN {
			t.Errorf("%v write: %v %s, want WRITE_STATE_WRITTEN", w.GetTarget(), w.GetState(), w.GetCode())
		}
	}

	m, err := client.GetManifest(ctx, &pb.GetManifestRequest{TaskId: task, RunId: "at-limit"})
	if err != nil {
		t.Fatalf("GetManifest of the %d-byte summary at the default receive limit: %v", len(summary), err)
	}
	if m.GetSummaryJson() != string(summary) {
		t.Fatalf("GetManifest summary_json differs (%d bytes, want %d)", len(m.GetSummaryJson()), len(summary))
	}
	t.Logf("GetManifest reply: %d bytes, receive limit %d", proto.Size(m), grpcGoDefaultRecvBytes)

	snap, err := client.GetTaskSnapshot(ctx, &pb.GetTaskSnapshotRequest{TaskId: task, PageSize: 1})
	if err != nil {
		t.Fatalf("GetTaskSnapshot with the %d-byte summary at the default receive limit: %v", len(summary), err)
	}
	if runs := snap.GetRuns(); len(runs) != 1 || runs[0].GetRunId() != "at-limit" || runs[0].GetSummaryJson() != string(summary) {
		t.Fatalf("GetTaskSnapshot runs: %d, want the one at-limit run with its summary byte for byte", len(runs))
	}
	t.Logf("GetTaskSnapshot reply: %d bytes, receive limit %d", proto.Size(snap), grpcGoDefaultRecvBytes)

	// One byte more: the server refuses it, naming its limit, and writes nothing.
	over := summaryOfSize(t, task, "over-limit", defaultMaxSummaryBytes+1)
	_, err = CompleteRun(ctx, client, task, "over-limit", at, over)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("CompleteRun of a %d-byte summary = %v, want ResourceExhausted", len(over), err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, strconv.Itoa(defaultMaxSummaryBytes)) {
		t.Errorf("message %q does not name the %d-byte limit", msg, defaultMaxSummaryBytes)
	}
	if _, err := client.GetManifest(ctx, &pb.GetManifestRequest{TaskId: task, RunId: "over-limit"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetManifest of the refused run = %v, want NotFound", err)
	}
	ids, err := client.GetTaskSnapshot(ctx, &pb.GetTaskSnapshotRequest{TaskId: task, OmitSummaries: true})
	if err != nil || len(ids.GetRuns()) != 1 {
		t.Errorf("GetTaskSnapshot after the refused run: %v, %v; want only at-limit", ids.GetRuns(), err)
	}
}
