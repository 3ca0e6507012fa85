// Package ready waits until a booting or resumed guest is ready for what
// comes next, by a sign the user names: a line on its serial console
// (Console) or a forwarded TCP port that a guest server answers (Port).
// Which sign a guest gives is the user's to say; the guest kit's
// "CLOUDLET-GUEST-READY" line is one example (KitMarker).
package ready

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"time"

	"cloudlet/lib/console"
)

// KitMarker is the line the guest kit's init prints when its shell is up.
const KitMarker = "CLOUDLET-GUEST-READY"

// panicRe is what a Linux guest prints when its kernel died while booting:
// no sign will come, so waiting ends at once.
var panicRe = regexp.MustCompile(`Kernel panic`)

// Console waits until re matches the guest's serial console output: what
// QEMU logged to logPath before con connected (empty: none), then what con
// reads. It fails at once if the guest kernel panics.
func Console(ctx context.Context, con *console.Console, logPath string, re *regexp.Regexp) error {
	if logPath != "" {
		b, err := os.ReadFile(logPath)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if re.Match(b) {
			return nil
		}
		if panicRe.Match(b) {
			return fmt.Errorf("the guest kernel panicked (see %s)", logPath)
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if con.WaitRegexp(ctx, panicRe) == nil {
			cancel(fmt.Errorf("the guest kernel panicked:\n%s", con.Tail(1500)))
		}
	}()
	if err := con.WaitRegexp(ctx, re); err != nil {
		if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
			return cause
		}
		return fmt.Errorf("the guest never printed a line matching /%s/ on its serial console: %w\nlast output:\n%s", re, err, con.Tail(1000))
	}
	return nil
}

// ProbeWait is how long Port waits for a reply or a close after it
// connected: QEMU's user-mode networking accepts every connection on the
// host side and closes it only when the guest refuses it.
var ProbeWait = time.Second

// Port waits until a guest server answers on addr, the host side of a
// forwarded port: a connection that stays open for ProbeWait or that
// brings data counts; one the forwarder closes at once (no guest server
// yet) does not.
func Port(ctx context.Context, addr string) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		err := probe(ctx, addr)
		if err == nil {
			return nil
		}
		var ne net.Error
		if last == nil || (ctx.Err() == nil && !(errors.As(err, &ne) && ne.Timeout())) {
			last = err // not the error of a probe cut short by the deadline
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing in the guest answered on %s (%v): %w", addr, last, ctx.Err())
		case <-t.C:
		}
	}
}

func probe(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(ProbeWait))
	var b [1]byte
	n, err := c.Read(b[:])
	var ne net.Error
	switch {
	case n > 0:
		return nil
	case errors.As(err, &ne) && ne.Timeout():
		return nil // open and quiet: a server waiting for a request
	case errors.Is(err, io.EOF):
		return errors.New("connection closed at once: no guest server on that port yet")
	default:
		return err
	}
}
