// Command cloudletd is the authenticated synthesis service: an SSH server
// (keys in a clients file) whose clients send an overlay and get a running
// instance; see run.go and lib/service.
package main

import "cloudlet/lib/cliutil"

func main() { cliutil.Main("cloudletd", run) }
