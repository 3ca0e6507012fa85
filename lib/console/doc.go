// Package console drives a guest's serial console exposed by QEMU as a unix
// socket (lib/vm puts it at RunDir/serial.sock).
//
// A Console keeps reading everything the guest prints into a buffer. WaitFor
// waits for a string to appear (for example the kit guest's
// "CLOUDLET-GUEST-READY" line), and Run types a shell command wrapped in
// unique begin/end markers and returns its output and exit status.
//
// The markers are typed with an empty pair of single quotes inside them, so
// the shell's or terminal's echo of the typed line never matches the marker
// the command prints:
//
//	echo @@CLB''EGIN-<token>@@; { <cmd>; } </dev/null; echo @@CLE''ND-<token>-$?@@
//
// Run sends a newline first, so it also works on a reconnected console of a
// resumed VM whose shell is already sitting at a prompt. Commands run with stdin from
// /dev/null, so they cannot swallow later console input.
package console
