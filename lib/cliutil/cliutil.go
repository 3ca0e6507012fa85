package cliutil

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"

	"cloudlet/format"
	"cloudlet/lib/progress"

	"github.com/urfave/cli/v2"
)

// Exit codes shared by every tool (each tool's help repeats them).
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2
	ExitCorrupt     = 3
	ExitUpstream    = 4
	ExitInterrupted = 130
)

// ExitStatusHelp is appended to every tool's description.
const ExitStatusHelp = `
EXIT STATUS
   0    success
   1    failure (the message says what and what to do)
   2    usage error
   3    corrupt, truncated or invalid input stream
   4    an upstream stage failed (its message is printed)
   130  interrupted`

// RunFunc is a tool's testable entry point.
type RunFunc func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error

// UsageError marks errors in how a tool was called.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError.
func Usagef(f string, args ...any) error { return &UsageError{fmt.Sprintf(f, args...)} }

// ExitCode maps an error to the documented exit codes.
func ExitCode(err error) int {
	var up *format.UpstreamError
	var ce *format.CorruptError
	var ue *UsageError
	var es interface{ ExitStatus() int }
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &es):
		return es.ExitStatus()
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.As(err, &up):
		return ExitUpstream
	case errors.As(err, &ce):
		return ExitCorrupt
	case errors.As(err, &ue):
		return ExitUsage
	}
	return ExitFailure
}

// Main runs a tool: it cancels the context on SIGINT/SIGTERM, runs run with
// the process's streams, prints a failure as "name: message" on stderr and
// exits with ExitCode.
func Main(name string, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A closed pipe downstream becomes an EPIPE write error, so the normal
	// cleanup runs (temp files, QEMU) instead of a silent death by SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	stopProfile := startProfile(name)
	err := run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stopProfile()
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	}
	os.Exit(ExitCode(err))
}

// ProfileEnv names a folder: when set, every tool writes a CPU profile of
// its run there as NAME.pprof (`go tool pprof bin/NAME DIR/NAME.pprof`), so
// the stages of one pipeline can be profiled together.
const ProfileEnv = "CLOUDLET_CPUPROFILE"

func startProfile(name string) func() {
	dir := os.Getenv(ProfileEnv)
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s: %v (no profile)\n", name, ProfileEnv, err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// NewApp returns a urfave/cli App for a tool. Help text and usage errors go
// to stderr; stdout is left to the tool's data.
func NewApp(name, usage, usageText, description string, flags []cli.Flag, action cli.ActionFunc, stdin io.Reader, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:                  name,
		Usage:                 usage,
		UsageText:             usageText,
		Description:           description + "\n" + ExitStatusHelp,
		Flags:                 flags,
		Action:                action,
		Reader:                stdin,
		Writer:                stderr,
		ErrWriter:             stderr,
		HideHelpCommand:       true,
		ExitErrHandler:        func(*cli.Context, error) {},
		OnUsageError:          func(c *cli.Context, err error, _ bool) error { return &UsageError{err.Error()} },
		CustomAppHelpTemplate: "",
	}
}

// NoArgs rejects positional arguments (urfave/cli v2 treats flags placed
// after an argument as arguments, so say so).
func NoArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return Usagef("unexpected argument %q (flags must come before arguments; see --help)", c.Args().First())
	}
	return nil
}

// IsTerminal reports whether w is a terminal (not merely a character
// device: writing a stream to /dev/null is fine).
func IsTerminal(w any) bool { return progress.IsTerminal(w) }

// CheckStdout refuses to write a binary stream to a terminal.
func CheckStdout(stdout io.Writer, force bool) error {
	if !force && IsTerminal(stdout) {
		return Usagef("refusing to write a binary stream to a terminal; redirect stdout to a file or pipe (or use --force)")
	}
	return nil
}

// ForceFlag is the --force flag of tools that write a binary stream.
var ForceFlag = &cli.BoolFlag{Name: "force", Usage: "write the binary stream even if stdout is a terminal"}

// OptionalValue lets a string flag be given without its value, as
// "--name [VALUE]": where --name is not followed by a value that looks like
// one (contains ':', as a URI does), def is put in. Arguments after "--"
// are left alone.
func OptionalValue(args []string, name, def string) []string {
	return OptionalValueFunc(args, name, def, func(a string) bool { return !strings.HasPrefix(a, "-") && strings.Contains(a, ":") })
}

// OptionalValueFunc is OptionalValue with the test of what is a value.
func OptionalValueFunc(args []string, name, def string, isValue func(string) bool) []string {
	out := make([]string, 0, len(args)+1)
	for i := 0; i < len(args); i++ {
		a := args[i]
		out = append(out, a)
		if a == "--" {
			return append(out, args[i+1:]...)
		}
		if a != "--"+name && a != "-"+name {
			continue
		}
		if i+1 < len(args) && isValue(args[i+1]) {
			continue
		}
		out = append(out, def)
	}
	return out
}
