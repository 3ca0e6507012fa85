// Command disk-diff diffs the disk records of a cloudlet stream against a
// base VM; see lib/diff and README.md.
package main

import (
	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/diff"
)

func main() { cliutil.Main("disk-diff", diff.Command("disk-diff", format.SpaceDisk)) }
