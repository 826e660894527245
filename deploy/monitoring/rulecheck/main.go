// Command rulecheck checks Prometheus rule files as `promtool check rules`
// does: each file is parsed and validated by Prometheus's own rule loader
// (rulefmt.ParseFile with the PromQL parser), so a malformed expression,
// an unknown field, a bad duration or a bad template fails. It exists
// because promtool itself takes over ten minutes to build on the CI machine
// (it links every service discovery), and these packages build in about one.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rulecheck RULE_FILE...")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	failed := false
	for _, path := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, parser.NewParser(parser.Options{}), logger)
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		}
		if len(errs) > 0 {
			failed = true
			continue
		}
		rules := 0
		for _, group := range groups.Groups {
			rules += len(group.Rules)
		}
		fmt.Printf("%s: SUCCESS: %d rules found\n", path, rules)
	}
	if failed {
		os.Exit(1)
	}
}
