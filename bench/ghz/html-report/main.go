// Command ghz-html-report renders a ghz JSON report as ghz's own HTML report.
//
// ghz prints one format per run; rendering the HTML from the JSON report lets
// one load run yield both files, so they always describe the same calls.
// Built by bench/ghz/install-ghz against the pinned ghz version.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/bojand/ghz/printer"
	"github.com/bojand/ghz/runner"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: ghz-html-report REPORT.json OUT.html")
		os.Exit(2)
	}
	if err := render(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "ghz-html-report:", err)
		os.Exit(1)
	}
}

func render(reportPath, htmlPath string) error {
	raw, err := os.ReadFile(reportPath)
	if err != nil {
		return err
	}
	var report runner.Report
	if err := json.Unmarshal(raw, &report); err != nil {
		return fmt.Errorf("%s: %w", reportPath, err)
	}
	out, err := os.Create(htmlPath)
	if err != nil {
		return err
	}
	p := printer.ReportPrinter{Report: &report, Out: out}
	if err := p.Print("html"); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
