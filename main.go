// Command pgtenant is a PostgreSQL proxy that gives each tenant of a shared,
// row-level-security protected database its own view of it.
package main

import (
	"os"

	"github.com/pgtenant/pgtenant/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
