// Command vm-handoff moves a running synthesized VM to another cloudlet
// with the same base; see run.go and README.md.
package main

import "cloudlet/lib/cliutil"

func main() { cliutil.Main("vm-handoff", run) }
