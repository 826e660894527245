package interop

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Faults are placed in the server's SQLite database (<data dir>/runstore.db)
// while it runs, with Debian's sqlite3 command (tests/interop/go/run installs
// it when missing).

// database is the server's database file inside its data dir.
func database(dataDir string) string { return filepath.Join(dataDir, "runstore.db") }

func sqlite3Bin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Fatal("sqlite3 not found: run tests/interop/go/run, or apt-get install sqlite3")
	}
	return bin
}

// refuseWrites makes every write of taskID to table fail for good: triggers
// that RAISE on INSERT and on UPDATE (a rewritten run is an upsert). The
// running server sees them on its next statement; a RAISE is a constraint
// failure, so that write is FAILED_PRECONDITION, not retryable, and the
// call's other write is unaffected.
func refuseWrites(t *testing.T, dataDir, table, taskID string) {
	t.Helper()
	var sql strings.Builder
	for _, event := range []string{"INSERT", "UPDATE"} {
		fmt.Fprintf(&sql, "CREATE TRIGGER doomed_%s_%s BEFORE %s ON %s WHEN NEW.task_id = '%s' "+
			"BEGIN SELECT RAISE(ABORT, 'injected fault'); END;\n",
			table, strings.ToLower(event), event, table, taskID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, sqlite3Bin(t), "-bail", "-cmd", ".timeout 5000", database(dataDir), sql.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: creating the triggers: %v\n%s", err, out)
	}
}

// holdWriteLock takes the database's write lock (BEGIN IMMEDIATE in a
// sqlite3 process kept open) and returns once it is held. The server's
// writes then wait --lock-timeout for it and fail with ABORTED, retryable.
// release ends the transaction and the process; it is idempotent and also
// runs at cleanup.
func holdWriteLock(t *testing.T, dataDir string) (release func()) {
	t.Helper()
	cmd := exec.Command(sqlite3Bin(t), "-bail", "-cmd", ".timeout 5000", database(dataDir))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr logBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sqlite3: %v", err)
	}
	exited := make(chan error, 1)
	locked := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		locked <- strings.TrimSpace(line) == "locked"
		_, _ = io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		_, _ = io.WriteString(stdin, "ROLLBACK;\n")
		stdin.Close() // end of input: sqlite3 exits
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("sqlite3 holding the lock: %v\n%s", err, stderr.String())
			}
		case <-time.After(readyTimeout):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("sqlite3 did not exit within %v of its end of input", readyTimeout)
		}
	}
	t.Cleanup(release)
	if _, err := io.WriteString(stdin, "BEGIN IMMEDIATE;\nSELECT 'locked';\n"); err != nil {
		t.Fatalf("sqlite3: %v", err)
	}
	select {
	case ok := <-locked:
		if !ok {
			t.Fatalf("sqlite3 could not take the write lock\n%s", stderr.String())
		}
	case <-time.After(readyTimeout):
		t.Fatalf("sqlite3 did not take the write lock within %v", readyTimeout)
	}
	return release
}
