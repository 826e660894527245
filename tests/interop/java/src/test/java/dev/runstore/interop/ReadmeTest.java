package dev.runstore.interop;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.junit.jupiter.api.Test;

/** README.md shows the client as it is: each of its Java snippets is a piece of the client. */
class ReadmeTest {
  static final Path SUITE = Fixture.repo().resolve("tests/interop/java");

  @Test
  void everyJavaSnippetIsCopiedFromTheClient() throws IOException {
    List<String> client =
        normalised(
            Files.readAllLines(
                SUITE.resolve("src/main/java/dev/runstore/interop/RunstoreClient.java"),
                StandardCharsets.UTF_8));
    List<List<String>> snippets = javaSnippets(SUITE.resolve("README.md"));

    assertFalse(snippets.isEmpty(), "README.md has Java snippets");
    for (List<String> snippet : snippets) {
      assertTrue(
          Collections.indexOfSubList(client, snippet) >= 0,
          () -> "README.md snippet is not in RunstoreClient.java:\n" + String.join("\n", snippet));
    }
  }

  /** The ```java blocks of a Markdown file, normalised. */
  static List<List<String>> javaSnippets(Path markdown) throws IOException {
    List<List<String>> snippets = new ArrayList<>();
    List<String> current = null;
    for (String line : Files.readAllLines(markdown, StandardCharsets.UTF_8)) {
      if (current == null && line.strip().equals("```java")) {
        current = new ArrayList<>();
      } else if (current != null && line.strip().equals("```")) {
        snippets.add(normalised(current));
        current = null;
      } else if (current != null) {
        current.add(line);
      }
    }
    return snippets;
  }

  /** Lines without their indentation (snippets are dedented), blank lines dropped. */
  static List<String> normalised(List<String> lines) {
    List<String> out = new ArrayList<>();
    for (String line : lines) {
      if (!line.isBlank()) {
        out.add(line.strip());
      }
    }
    return out;
  }
}
