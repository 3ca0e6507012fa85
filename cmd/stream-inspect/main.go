// Command stream-inspect prints what is inside a cloudlet stream or overlay;
// see run.go and README.md.
package main

import "cloudlet/lib/cliutil"

func main() { cliutil.Main("stream-inspect", run) }
