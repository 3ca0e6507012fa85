package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"
)

// DefaultMaxRequest is the default largest payload of one READ or WRITE.
const DefaultMaxRequest = 2 << 20

// maxZeroRequest bounds one WRITE_ZEROES request when the server advertised
// no maximum block size.
const maxZeroRequest = 1 << 30

var (
	// ErrClosed is returned by calls on a Client after Close.
	ErrClosed = errors.New("nbd: client closed")
	// ErrReadOnly is returned by writes to a read-only export.
	ErrReadOnly = errors.New("nbd: export is read-only")
)

// Options configure a connection.
type Options struct {
	// Export is the export name; qemu-nbd's default export is "".
	Export string
	// MaxRequest is the largest payload per READ or WRITE request
	// (DefaultMaxRequest when 0). It is lowered to the server's maximum
	// block size when one is advertised.
	MaxRequest int
	// Timeout bounds each request in the transmission phase (0: no bound).
	Timeout time.Duration
}

// Client is a connection to one NBD export. It is safe for concurrent use;
// requests are serialized.
type Client struct {
	mu       sync.Mutex
	conn     net.Conn
	size     uint64
	flags    uint16
	minBlock uint32 // 1 unless the server insists on more
	maxBlock uint32 // 0 when not advertised
	maxReq   int
	timeout  time.Duration
	cookie   uint64
	hdr      [28]byte
	rhdr     [16]byte
	zeros    []byte
	err      error // sticky transport/protocol failure
	closed   bool
}

// Dial connects to an NBD server (network "unix" or "tcp") and performs the
// handshake. ctx bounds the connection and the handshake.
func Dial(ctx context.Context, network, address string, opts Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	return NewClient(ctx, conn, opts)
}

// NewClient performs the handshake on conn, which it owns from then on (it
// is closed on failure and by Close). ctx bounds the handshake.
func NewClient(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	if len(opts.Export) > maxStringLen {
		conn.Close()
		return nil, fmt.Errorf("nbd: export name longer than %d bytes", maxStringLen)
	}
	c := &Client{conn: conn, minBlock: 1, timeout: opts.Timeout}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err := c.handshake(opts.Export)
	if !stop() {
		// The context ended while we worked: the deadline may be set at
		// any moment, so the connection cannot be trusted.
		if err == nil {
			err = ctx.Err()
		} else {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nbd: handshake: %w", err)
	}
	conn.SetDeadline(time.Time{})

	c.maxReq = opts.MaxRequest
	if c.maxReq <= 0 {
		c.maxReq = DefaultMaxRequest
	}
	if c.maxBlock != 0 && uint64(c.maxReq) > uint64(c.maxBlock) {
		c.maxReq = int(c.maxBlock)
	}
	c.maxReq -= c.maxReq % int(c.minBlock)
	if c.maxReq < int(c.minBlock) {
		c.maxReq = int(c.minBlock)
	}
	return c, nil
}

// Size returns the export's size in bytes.
func (c *Client) Size() uint64 { return c.size }

// Flags returns the export's transmission flags (Flag* constants).
func (c *Client) Flags() uint16 { return c.flags }

// ReadOnly reports whether the server exports read-only.
func (c *Client) ReadOnly() bool { return c.flags&FlagReadOnly != 0 }

// BlockSizes returns the server's minimum block size (1 when none was
// advertised) and maximum block size (0 when none was advertised).
func (c *Client) BlockSizes() (min, max uint32) { return c.minBlock, c.maxBlock }

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

func (c *Client) handshake(export string) error {
	var b [18]byte
	if _, err := io.ReadFull(c.conn, b[:16]); err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	if be64(b[0:8]) != magicNBD {
		return fmt.Errorf("bad greeting magic %#x", be64(b[0:8]))
	}
	switch m := be64(b[8:16]); m {
	case magicOpts:
	case magicOldstyle:
		return errors.New("oldstyle handshake is not supported")
	default:
		return fmt.Errorf("bad newstyle magic %#x", m)
	}
	if _, err := io.ReadFull(c.conn, b[:2]); err != nil {
		return fmt.Errorf("reading handshake flags: %w", err)
	}
	sflags := be16(b[:2])
	var cflags uint32
	fixed := sflags&flagFixedNewstyle != 0
	noZeroes := sflags&flagNoZeroes != 0
	if fixed {
		cflags |= flagFixedNewstyle
	}
	if noZeroes {
		cflags |= flagNoZeroes
	}
	binary.BigEndian.PutUint32(b[:4], cflags)
	if _, err := c.conn.Write(b[:4]); err != nil {
		return fmt.Errorf("writing client flags: %w", err)
	}
	if !fixed {
		return c.exportName(export, noZeroes)
	}
	err := c.optGo(export, false)
	if errors.Is(err, errBlockSizeRequired) {
		err = c.optGo(export, true)
	}
	if errors.Is(err, errGoUnsupported) {
		return c.exportName(export, noZeroes)
	}
	return err
}

var (
	errGoUnsupported     = errors.New("NBD_OPT_GO unsupported")
	errBlockSizeRequired = errors.New("server requires block size negotiation")
)

func (c *Client) sendOption(opt uint32, data []byte) error {
	msg := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(msg[0:8], magicOpts)
	binary.BigEndian.PutUint32(msg[8:12], opt)
	binary.BigEndian.PutUint32(msg[12:16], uint32(len(data)))
	copy(msg[16:], data)
	if _, err := c.conn.Write(msg); err != nil {
		return fmt.Errorf("sending %s: %w", optName(opt), err)
	}
	return nil
}

func (c *Client) exportName(export string, noZeroes bool) error {
	if err := c.sendOption(optExportName, []byte(export)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += exportNameZeroes
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.conn, b); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("server closed the connection after NBD_OPT_EXPORT_NAME %q (no such export?)", export)
		}
		return fmt.Errorf("reading NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	return c.setExport(be64(b[0:8]), be16(b[8:10]))
}

func (c *Client) setExport(size uint64, flags uint16) error {
	if size > math.MaxInt64 {
		return fmt.Errorf("export size %d too large", size)
	}
	c.size = size
	if flags&FlagHasFlags == 0 {
		flags = 0
	}
	c.flags = flags
	return nil
}

func (c *Client) optGo(export string, wantBlockSize bool) error {
	data := make([]byte, 0, 4+len(export)+4)
	data = binary.BigEndian.AppendUint32(data, uint32(len(export)))
	data = append(data, export...)
	if wantBlockSize {
		data = binary.BigEndian.AppendUint16(data, 1)
		data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	} else {
		data = binary.BigEndian.AppendUint16(data, 0)
	}
	if err := c.sendOption(optGo, data); err != nil {
		return err
	}
	haveExport := false
	var hdr [20]byte
	for {
		if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
			return fmt.Errorf("reading NBD_OPT_GO reply: %w", err)
		}
		if m := be64(hdr[0:8]); m != magicOptReply {
			return fmt.Errorf("bad option reply magic %#x", m)
		}
		if opt := be32(hdr[8:12]); opt != optGo {
			return fmt.Errorf("reply for %s while waiting for NBD_OPT_GO", optName(opt))
		}
		typ, n := be32(hdr[12:16]), be32(hdr[16:20])
		if n > maxOptReplyLen {
			return fmt.Errorf("NBD_OPT_GO %s reply length %d exceeds %d", repName(typ), n, maxOptReplyLen)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c.conn, payload); err != nil {
			return fmt.Errorf("reading NBD_OPT_GO %s payload: %w", repName(typ), err)
		}
		switch {
		case typ == repAck:
			if n != 0 {
				return fmt.Errorf("NBD_REP_ACK with %d payload bytes", n)
			}
			if !haveExport {
				return errors.New("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return nil
		case typ == repInfo:
			if n < 2 {
				return fmt.Errorf("NBD_REP_INFO of %d bytes", n)
			}
			switch info := be16(payload); info {
			case infoExport:
				if n != 12 {
					return fmt.Errorf("NBD_INFO_EXPORT of %d bytes, want 12", n)
				}
				if err := c.setExport(be64(payload[2:10]), be16(payload[10:12])); err != nil {
					return err
				}
				haveExport = true
			case infoBlockSize:
				if n != 14 {
					return fmt.Errorf("NBD_INFO_BLOCK_SIZE of %d bytes, want 14", n)
				}
				if err := c.setBlockSizes(be32(payload[2:6]), be32(payload[6:10]), be32(payload[10:14])); err != nil {
					return err
				}
			default:
				// Names, descriptions and future information: ignored.
			}
		case typ&repErrBit != 0:
			msg := string(payload)
			if len(msg) > 256 {
				msg = msg[:256] + "..."
			}
			switch typ {
			case repErrUnsup:
				return errGoUnsupported
			case repErrBlockSReqd:
				if !wantBlockSize {
					return errBlockSizeRequired
				}
			}
			return fmt.Errorf("NBD_OPT_GO export %q: %s: %q", export, repName(typ), msg)
		default:
			return fmt.Errorf("unexpected NBD_OPT_GO %s", repName(typ))
		}
	}
}

func (c *Client) setBlockSizes(min, pref, max uint32) error {
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	if !pow2(min) || min > 64<<10 || !pow2(pref) || pref < min || max < pref || max%min != 0 {
		return fmt.Errorf("invalid block sizes min %d preferred %d max %d", min, pref, max)
	}
	c.minBlock, c.maxBlock = min, max
	return nil
}

// fail records a transport or protocol failure: the connection is closed
// and unusable from now on.
func (c *Client) fail(cmd uint16, off, length uint64, err error) error {
	err = fmt.Errorf("nbd: %s at offset %d, length %d: %w", cmdName(cmd), off, length, err)
	c.err = err
	c.conn.Close()
	return err
}

func (c *Client) usable() error {
	if c.closed {
		return ErrClosed
	}
	if c.err != nil {
		return fmt.Errorf("nbd: connection unusable after an earlier failure: %w", c.err)
	}
	return nil
}

// do sends one request and reads its simple reply. w is the write payload;
// r receives the read payload (len(r) == length for READ).
func (c *Client) do(cmd, flags uint16, off uint64, length uint32, w, r []byte) error {
	if c.timeout > 0 {
		c.conn.SetDeadline(time.Now().Add(c.timeout))
	}
	c.cookie++
	h := c.hdr[:]
	binary.BigEndian.PutUint32(h[0:4], magicRequest)
	binary.BigEndian.PutUint16(h[4:6], flags)
	binary.BigEndian.PutUint16(h[6:8], cmd)
	binary.BigEndian.PutUint64(h[8:16], c.cookie)
	binary.BigEndian.PutUint64(h[16:24], off)
	binary.BigEndian.PutUint32(h[24:28], length)
	var err error
	if len(w) > 0 {
		bufs := net.Buffers{h, w}
		_, err = bufs.WriteTo(c.conn)
	} else {
		_, err = c.conn.Write(h)
	}
	if err != nil {
		return c.fail(cmd, off, uint64(length), fmt.Errorf("sending request: %w", err))
	}
	if cmd == cmdDisc {
		return nil
	}
	if _, err := io.ReadFull(c.conn, c.rhdr[:]); err != nil {
		return c.fail(cmd, off, uint64(length), fmt.Errorf("reading reply: %w", err))
	}
	switch m := be32(c.rhdr[0:4]); m {
	case magicSimple:
	case magicStructured:
		return c.fail(cmd, off, uint64(length), errors.New("structured reply, which was never negotiated"))
	default:
		return c.fail(cmd, off, uint64(length), fmt.Errorf("bad reply magic %#x", m))
	}
	if ck := be64(c.rhdr[8:16]); ck != c.cookie {
		return c.fail(cmd, off, uint64(length), fmt.Errorf("reply cookie %d, want %d", ck, c.cookie))
	}
	if code := be32(c.rhdr[4:8]); code != 0 {
		// A simple error reply carries no payload.
		if c.timeout > 0 {
			c.conn.SetDeadline(time.Time{})
		}
		return &Error{Command: cmdName(cmd), Offset: off, Length: uint64(length), Code: code}
	}
	if len(r) > 0 {
		if _, err := io.ReadFull(c.conn, r); err != nil {
			return c.fail(cmd, off, uint64(length), fmt.Errorf("reading %d payload bytes: %w", len(r), err))
		}
	}
	if c.timeout > 0 {
		c.conn.SetDeadline(time.Time{})
	}
	return nil
}

func (c *Client) checkRange(cmd uint16, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("nbd: %s at offset %d, length %d: negative offset or length", cmdName(cmd), off, length)
	}
	if uint64(off) > c.size || uint64(length) > c.size-uint64(off) {
		return fmt.Errorf("nbd: %s at offset %d, length %d: beyond the end of the export (%d bytes)", cmdName(cmd), off, length, c.size)
	}
	if m := int64(c.minBlock); m > 1 && (off%m != 0 || length%m != 0) {
		return fmt.Errorf("nbd: %s at offset %d, length %d: not aligned to the server's minimum block size %d", cmdName(cmd), off, length, m)
	}
	return nil
}

// ReadAt reads len(p) bytes at off (io.ReaderAt). Reading past the end of
// the export returns the bytes before the end and io.EOF.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return 0, err
	}
	var eof error
	if off >= 0 && uint64(off) >= c.size && len(p) > 0 {
		return 0, io.EOF
	}
	if off >= 0 && uint64(len(p)) > c.size-uint64(off) {
		p, eof = p[:c.size-uint64(off)], io.EOF
	}
	if err := c.checkRange(cmdRead, off, int64(len(p))); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		k := min(len(p)-n, c.maxReq)
		if err := c.do(cmdRead, 0, uint64(off)+uint64(n), uint32(k), nil, p[n:n+k]); err != nil {
			return n, err
		}
		n += k
	}
	return n, eof
}

// WriteAt writes p at off (io.WriterAt). Writes past the end of the export
// are refused without sending anything.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.writable(cmdWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		k := min(len(p)-n, c.maxReq)
		if err := c.do(cmdWrite, 0, uint64(off)+uint64(n), uint32(k), p[n:n+k], nil); err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

func (c *Client) writable(cmd uint16, off, length int64) error {
	if err := c.usable(); err != nil {
		return err
	}
	if c.flags&FlagReadOnly != 0 {
		return fmt.Errorf("nbd: %s at offset %d, length %d: %w", cmdName(cmd), off, length, ErrReadOnly)
	}
	return c.checkRange(cmd, off, length)
}

// WriteZeroes makes length bytes at off read as zeroes, letting the server
// punch holes (it does not send NBD_CMD_FLAG_NO_HOLE). Without the server's
// NBD_FLAG_SEND_WRITE_ZEROES it writes buffers of zeroes instead.
func (c *Client) WriteZeroes(off, length int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.writable(cmdWriteZeroes, off, length); err != nil {
		return err
	}
	if c.flags&FlagSendWriteZeroes == 0 {
		if c.zeros == nil {
			c.zeros = make([]byte, c.maxReq)
		}
		for done := int64(0); done < length; {
			k := min(length-done, int64(len(c.zeros)))
			if err := c.do(cmdWrite, 0, uint64(off+done), uint32(k), c.zeros[:k], nil); err != nil {
				return err
			}
			done += k
		}
		return nil
	}
	step := int64(maxZeroRequest)
	if c.maxBlock != 0 {
		step = int64(c.maxBlock)
	}
	step -= step % int64(c.minBlock)
	for done := int64(0); done < length; {
		k := min(length-done, step)
		if err := c.do(cmdWriteZeroes, 0, uint64(off+done), uint32(k), nil, nil); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// Flush asks the server to make all completed writes durable. It does
// nothing when the server does not advertise NBD_FLAG_SEND_FLUSH.
func (c *Client) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return err
	}
	if c.flags&FlagSendFlush == 0 {
		return nil
	}
	return c.do(cmdFlush, 0, 0, 0, nil, nil)
}

// Close sends NBD_CMD_DISC (when the connection is still healthy) and
// closes the connection. It does not flush. Calling it again returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.err != nil {
		return nil // already closed by fail
	}
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	err := c.do(cmdDisc, 0, 0, 0, nil, nil)
	if err != nil {
		return err // fail already closed the connection
	}
	if cerr := c.conn.Close(); cerr != nil {
		return fmt.Errorf("nbd: close: %w", cerr)
	}
	return nil
}
