// Command overlay-keygen makes an ed25519 key pair for signing overlays; see
// run.go and format/SPEC.md section 6.1.
package main

import "cloudlet/lib/cliutil"

func main() { cliutil.Main("overlay-keygen", run) }
