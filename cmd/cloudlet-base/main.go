// Command cloudlet-base makes base VM folders from a captured stream and
// manages the catalog that finds them by ID; see run.go and README.md.
package main

import "cloudlet/lib/cliutil"

func main() { cliutil.Main("cloudlet-base", run) }
