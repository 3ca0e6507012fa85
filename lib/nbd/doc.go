// Package nbd is a minimal client for the Network Block Device protocol,
// enough to read and write a disk image served by qemu-nbd.
//
// Scope:
//
//   - Fixed newstyle handshake only (an oldstyle server is refused; a
//     newstyle server without the fixed bit gets NBD_OPT_EXPORT_NAME).
//     NBD_OPT_GO is tried first; a server that answers NBD_REP_ERR_UNSUP is
//     asked again with NBD_OPT_EXPORT_NAME. qemu-nbd's default export name
//     is the empty string.
//   - No TLS, and no structured replies: they are never negotiated, so every
//     reply is a simple reply. A structured reply is a protocol error.
//   - Requests are serialized: one request is in flight at a time, guarded by
//     a mutex, so a Client is safe for concurrent use. Large reads and
//     writes are split into requests of at most Options.MaxRequest bytes
//     (2 MiB by default, lowered to the server's advertised maximum block
//     size); read payloads land directly in the caller's buffer and write
//     payloads go out with writev, so no I/O data is copied.
//
// Every length the server sends during the handshake is checked against a
// cap before anything is allocated, and every reply header is checked
// (magic, cookie). A server error on a request is returned as an *Error that
// names the command, offset, length and NBD error code; the connection stays
// usable. A transport or protocol failure (hang-up, short read, bad magic or
// cookie, I/O timeout) makes the Client unusable: the connection is closed
// and every later call returns an error wrapping the first failure.
//
// Options.Timeout bounds each request in the transmission phase, so a server
// that stops answering yields an error instead of a hang; the handshake is
// bounded by the context given to Dial or NewClient.
package nbd
