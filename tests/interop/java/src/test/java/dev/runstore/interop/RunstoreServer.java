package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * One {@code runstore serve} process on 127.0.0.1:0, started by a test. {@link #close()} stops it
 * with SIGTERM and asserts exit code 0. Every wait is bounded.
 */
final class RunstoreServer implements AutoCloseable {
  static final Duration READY_TIMEOUT = Duration.ofSeconds(10);
  static final Duration EXIT_TIMEOUT = Duration.ofSeconds(30);

  private final Process process;
  private final Thread drain;
  private final StringBuffer output = new StringBuffer();
  private final Path dataDir;
  private String address;
  private boolean terminated;

  private RunstoreServer(Process process, Path dataDir, CompletableFuture<String> listening) {
    this.process = process;
    this.dataDir = dataDir;
    // Read the JSON log lines until "listening", then keep draining so the server never blocks
    // on a full pipe. The stream ends when the process exits.
    this.drain =
        new Thread(
            () -> {
              try (BufferedReader lines =
                  new BufferedReader(
                      new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = lines.readLine()) != null; ) {
                  output.append(line).append('\n');
                  String addr = listeningAddress(line);
                  if (addr != null) {
                    listening.complete(addr);
                  }
                }
              } catch (IOException e) {
                output.append("[reading server output: ").append(e).append("]\n");
              } finally {
                listening.completeExceptionally(
                    new IllegalStateException("server output ended before \"listening\""));
              }
            },
            "runstore-output");
    this.drain.setDaemon(true);
  }

  /** The server binary: $RUNSTORE_BIN, else {@code <repo>/target/release/runstore}. */
  static Path binary() {
    String bin = System.getenv("RUNSTORE_BIN");
    Path path =
        bin != null && !bin.isEmpty()
            ? Path.of(bin)
            : Fixture.repo().resolve("target/release/runstore");
    if (!Files.isExecutable(path)) {
      fail("runstore binary not found or not executable: " + path
          + " (run tests/interop/java/run, or set RUNSTORE_BIN)");
    }
    return path;
  }

  /** Starts the server with {@code dataDir} and returns once it logged its address. */
  static RunstoreServer start(Path dataDir, String... extraArgs)
      throws IOException, InterruptedException {
    List<String> command = new ArrayList<>(List.of(
        binary().toString(), "serve",
        "--listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:0",
        "--data-dir", dataDir.toString(),
        "--log-format", "json"));
    command.addAll(List.of(extraArgs));
    Process process = new ProcessBuilder(command).redirectErrorStream(true).start();
    process.getOutputStream().close();

    CompletableFuture<String> listening = new CompletableFuture<>();
    RunstoreServer server = new RunstoreServer(process, dataDir, listening);
    server.drain.start();
    try {
      server.address = listening.get(READY_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
    } catch (TimeoutException e) {
      server.kill();
      fail("server did not log \"listening\" within " + READY_TIMEOUT + "\n" + server.output());
    } catch (ExecutionException e) {
      boolean exited = process.waitFor(EXIT_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
      server.kill();
      fail("server exited before listening (exit code "
          + (exited ? process.exitValue() : "none") + ")\n" + server.output());
    }
    return server;
  }

  /** The address of a "listening" JSON log line, else null. */
  private static String listeningAddress(String line) {
    try {
      JsonElement parsed = JsonParser.parseString(line);
      if (parsed.isJsonObject()) {
        JsonObject entry = parsed.getAsJsonObject();
        if (entry.has("message") && "listening".equals(entry.get("message").getAsString())
            && entry.has("addr")) {
          return entry.get("addr").getAsString();
        }
      }
    } catch (RuntimeException notJson) {
      // Not a JSON log line.
    }
    return null;
  }

  /** host:port the server listens on. */
  String address() {
    return address;
  }

  Path dataDir() {
    return dataDir;
  }

  /** What the server logged so far. */
  String output() {
    return output.toString();
  }

  /**
   * Sends SIGTERM once; later calls do nothing. Through the ProcessHandle: Process.destroy() would
   * also close our end of the server's stdout, and the server's shutdown log lines would then hit
   * a closed pipe.
   */
  synchronized void terminate() {
    if (!terminated) {
      terminated = true;
      process.toHandle().destroy(); // SIGTERM on Unix
    }
  }

  private void kill() throws InterruptedException {
    process.destroyForcibly();
    process.waitFor(EXIT_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
    drain.join(READY_TIMEOUT.toMillis());
  }

  /** SIGTERM (if not sent yet), then expects exit code 0 within {@link #EXIT_TIMEOUT}. */
  @Override
  public void close() throws InterruptedException {
    terminate();
    if (!process.waitFor(EXIT_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS)) {
      kill();
      fail("server did not exit within " + EXIT_TIMEOUT + " of SIGTERM\n" + output());
    }
    drain.join(READY_TIMEOUT.toMillis());
    assertEquals(0, process.exitValue(), () -> "server exit code after SIGTERM\n" + output());
  }
}
