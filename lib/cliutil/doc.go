// Package cliutil holds what every cloudlet tool shares at its edge: the
// ~10-line main (signals, exit codes), a urfave/cli App whose help and usage
// errors go to stderr (never into the data stream on stdout), the refusal to
// write a binary stream to a terminal, and in-band error reporting for
// stream stages.
package cliutil
