package dev.runstore.interop;

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;

/** {@code tests/fixtures/run-summary.json} of the repository: its exact bytes, text and ids. */
record Fixture(byte[] bytes, String text, String taskId, String runId) {
  /** The timestamp the tests record the fixture's run with. */
  static final String TIMESTAMP = "2026-01-05T19:26:37.274Z";

  static final Instant FINISHED_AT = Instant.parse(TIMESTAMP);

  /** The repository root: -Drunstore.repo (set by the pom), else three levels up. */
  static Path repo() {
    String repo = System.getProperty("runstore.repo");
    Path path = repo != null && !repo.isEmpty() ? Path.of(repo) : Path.of("../../..");
    return path.toAbsolutePath().normalize();
  }

  static Path path() {
    return repo().resolve("tests/fixtures/run-summary.json");
  }

  static Fixture load() throws IOException {
    byte[] bytes = Files.readAllBytes(path());
    // Strict decoding: the bytes must be valid UTF-8, so the String is sent as exactly these bytes.
    String text =
        StandardCharsets.UTF_8
            .newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT)
            .decode(ByteBuffer.wrap(bytes))
            .toString();
    JsonObject ids = JsonParser.parseString(text).getAsJsonObject();
    return new Fixture(
        bytes, text, ids.get("taskId").getAsString(), ids.get("runId").getAsString());
  }
}
