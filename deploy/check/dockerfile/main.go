// Command dockerfile parses Dockerfiles with BuildKit's own parser and runs the
// lint rules BuildKit applies while parsing, without a Docker engine.
//
// Usage: go run ./deploy/check/dockerfile FILE...
//
// It exits with status 1 when a file does not parse or a rule warns. The rules
// that need the base images' configuration (such as UndefinedVar) run only
// during a real build, so they are not covered here.
package main

import (
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		problems, err := check(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
			continue
		}
		for _, problem := range problems {
			fmt.Fprintf(os.Stderr, "%s: %s\n", path, problem)
		}
		if len(problems) > 0 {
			failed = true
			continue
		}
		fmt.Printf("%s: parsed, no BuildKit parse-time lint warnings\n", path)
	}
	if failed {
		os.Exit(1)
	}
}

// check returns the parser's and the linter's warnings for one Dockerfile.
func check(path string) ([]string, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	result, err := parser.Parse(file)
	if err != nil {
		return nil, fmt.Errorf("parsing failed: %w", err)
	}
	var problems []string
	for _, warning := range result.Warnings {
		problems = append(problems, fmt.Sprintf("line %d: %s", warning.Location.Start.Line, warning.Short))
	}
	lint := linter.New(&linter.Config{
		Warn: func(rule, _, url, message string, location []parser.Range) {
			line := 0
			if len(location) > 0 {
				line = location[0].Start.Line
			}
			problems = append(problems, fmt.Sprintf("line %d: %s: %s (%s)", line, rule, message, url))
		},
	})
	if _, _, err := instructions.Parse(result.AST, lint); err != nil {
		return nil, fmt.Errorf("invalid instruction: %w", err)
	}
	return problems, nil
}
