// Command mem-diff diffs the memory records of a cloudlet stream against a
// base VM; see lib/diff and README.md.
package main

import (
	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/diff"
)

func main() { cliutil.Main("mem-diff", diff.Command("mem-diff", format.SpaceMem)) }
