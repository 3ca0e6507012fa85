// Command vm-console runs commands on the serial console of a VM started by
// vm-resume; see run.go and README.md.
package main

import "cloudlet/lib/cliutil"

func main() { cliutil.Main("vm-console", run) }
