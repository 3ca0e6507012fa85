// Command mem-diff is one stage of the cloudlet synthesis pipeline; see run.go
// and README.md.
package main

import "cloudlet/lib/cliutil"

func main() { cliutil.Main("mem-diff", run) }
