// Package qmpctl is a small QEMU Machine Protocol (QMP) client for driving
// one QEMU process: pausing and resuming it, capturing and restoring its
// state by migration, and waiting for its events.
//
// It is built on the qmp.Monitor interface of
// github.com/digitalocean/go-qemu/qmp and fixes that package's gaps:
//
//   - Every call takes a context. Dial retries until the socket exists and
//     accepts, bounded by the context.
//   - QMP errors keep their class: a failed command returns an *Error with
//     Class (for example "CommandNotFound" or "GenericError"), Desc and
//     Command.
//   - Events are drained from the moment the client exists, so command
//     responses never wait behind unread events, and kept for WaitEvent.
//   - Response lines longer than 64 KiB are fine (up to MaxLineSize).
//
// Dial does not use go-qemu's SocketMonitor. That monitor's Run turns a QMP
// error response into errors.New(desc) and returns no bytes, so the class is
// lost; it reads with a default bufio.Scanner, so a line over 64 KiB ends the
// connection; and its Connect and Run have no deadline. Dial therefore uses
// this package's own minimal QMP implementation over a net.Conn, which also
// satisfies qmp.Monitor. It tags each command with an "id" and matches
// responses by it, so a call abandoned because its context ended does not
// confuse the next one.
//
// New wraps any other qmp.Monitor (for example one from qmptest). With such a
// monitor a call whose context ends disconnects the monitor, because
// responses are matched by order and the connection cannot be trusted after
// an abandoned command; errors that the monitor reports without the response
// bytes (as go-qemu's SocketMonitor does) have no class.
//
// Typical use:
//
//	c, err := qmpctl.Dial(ctx, "/run/vm.qmp")
//	if err != nil { ... }
//	defer c.Close()
//	stopped := c.Subscribe("STOP", nil)
//	if err := c.Stop(ctx); err != nil { ... }
//	if _, err := stopped.Wait(ctx); err != nil { ... }
//	if err := c.Migrate(ctx, "exec:cat > state"); err != nil { ... }
//	if err := c.WaitMigration(ctx); err != nil { ... }
package qmpctl
