package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * Faults placed in a running server's SQLite database ({@code <data dir>/runstore.db}) with
 * Debian's {@code sqlite3} command, which tests/interop/java/run installs when missing. Every wait
 * is bounded.
 */
final class Database {
  static final long TIMEOUT_SECONDS = 10;

  private Database() {}

  static Path file(Path dataDir) {
    return dataDir.resolve("runstore.db");
  }

  /**
   * Makes every write of {@code taskId} to {@code table} fail for good: triggers that RAISE on
   * INSERT and on UPDATE (a rewritten run is an upsert). The server sees them on its next
   * statement; a RAISE is a constraint failure, so that write is FAILED_PRECONDITION, not
   * retryable, and the call's other write is unaffected. {@link #allowWrites} drops them.
   */
  static void refuseWrites(Path dataDir, String table, String taskId) {
    StringBuilder sql = new StringBuilder();
    for (String event : List.of("INSERT", "UPDATE")) {
      sql.append("CREATE TRIGGER ").append(trigger(table, event))
          .append(" BEFORE ").append(event).append(" ON ").append(table)
          .append(" WHEN NEW.task_id = '").append(taskId.replace("'", "''")).append("'")
          .append(" BEGIN SELECT RAISE(ABORT, 'injected fault'); END;\n");
    }
    sqlite(dataDir, sql.toString());
  }

  /** Drops the triggers of {@link #refuseWrites} on {@code table}. */
  static void allowWrites(Path dataDir, String table) {
    StringBuilder sql = new StringBuilder();
    for (String event : List.of("INSERT", "UPDATE")) {
      sql.append("DROP TRIGGER ").append(trigger(table, event)).append(";\n");
    }
    sqlite(dataDir, sql.toString());
  }

  private static String trigger(String table, String event) {
    return "doomed_" + table + "_" + event.toLowerCase();
  }

  private static void sqlite(Path dataDir, String sql) {
    try {
      Process process = command(dataDir, sql).redirectErrorStream(true).start();
      process.getOutputStream().close();
      if (!process.waitFor(TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
        process.destroyForcibly();
        fail("sqlite3 did not finish within " + TIMEOUT_SECONDS + " s: " + sql);
      }
      String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
      assertEquals(0, process.exitValue(), () -> "sqlite3 " + sql + ": " + output.strip());
    } catch (IOException e) {
      fail("cannot run sqlite3 (run tests/interop/java/run, or apt-get install sqlite3): " + e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new AssertionError(e);
    }
  }

  private static ProcessBuilder command(Path dataDir, String... sql) {
    List<String> command =
        new ArrayList<>(
            List.of("sqlite3", "-bail", "-cmd", ".timeout 5000", file(dataDir).toString()));
    command.addAll(List.of(sql));
    return new ProcessBuilder(command);
  }

  /**
   * Takes the database's write lock ({@code BEGIN IMMEDIATE} in a sqlite3 process kept open) and
   * returns once it is held. The server's writes then wait {@code --lock-timeout} for it and fail
   * with ABORTED, retryable. {@link WriteLock#close()} releases it (idempotent).
   */
  static WriteLock holdWriteLock(Path dataDir) {
    try {
      Process process = command(dataDir).redirectErrorStream(true).start();
      WriteLock lock = new WriteLock(process);
      lock.awaitHeld();
      return lock;
    } catch (IOException e) {
      fail("cannot run sqlite3 (run tests/interop/java/run, or apt-get install sqlite3): " + e);
      throw new AssertionError(e);
    }
  }

  /** A sqlite3 process holding the write lock. */
  static final class WriteLock implements AutoCloseable {
    private final Process process;
    private final Writer input;
    private final CompletableFuture<String> firstLine = new CompletableFuture<>();
    private final StringBuffer output = new StringBuffer();
    private boolean released;

    private WriteLock(Process process) {
      this.process = process;
      this.input = new OutputStreamWriter(process.getOutputStream(), StandardCharsets.UTF_8);
      Thread drain =
          new Thread(
              () -> {
                try (BufferedReader lines =
                    new BufferedReader(
                        new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                  for (String line; (line = lines.readLine()) != null; ) {
                    output.append(line).append('\n');
                    firstLine.complete(line);
                  }
                } catch (IOException e) {
                  output.append("[reading sqlite3 output: ").append(e).append("]\n");
                } finally {
                  firstLine.complete(null);
                }
              },
              "sqlite3-lock-output");
      drain.setDaemon(true);
      drain.start();
    }

    private void awaitHeld() throws IOException {
      input.write("BEGIN IMMEDIATE;\nSELECT 'locked';\n");
      input.flush();
      String line;
      try {
        line = firstLine.get(TIMEOUT_SECONDS, TimeUnit.SECONDS);
      } catch (TimeoutException | ExecutionException e) {
        close();
        throw new AssertionError("sqlite3 did not take the write lock: " + e + "\n" + output, e);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        close();
        throw new AssertionError(e);
      }
      if (!"locked".equals(line)) {
        close();
        fail("sqlite3 could not take the write lock:\n" + output);
      }
    }

    /** Ends the transaction and the process (end of its input). */
    @Override
    public synchronized void close() {
      if (released) {
        return;
      }
      released = true;
      try {
        input.write("ROLLBACK;\n");
        input.close();
      } catch (IOException e) {
        // The process is gone already: its lock went with it.
      }
      try {
        if (!process.waitFor(TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
          process.destroyForcibly();
          process.waitFor(TIMEOUT_SECONDS, TimeUnit.SECONDS);
          fail("sqlite3 did not exit within " + TIMEOUT_SECONDS + " s of its end of input");
        }
      } catch (InterruptedException e) {
        process.destroyForcibly();
        Thread.currentThread().interrupt();
      }
    }
  }
}
