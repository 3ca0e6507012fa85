package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is a tiny in-test NBD server with knobs for the handshake variants
// and failure modes the client must survive.
type fake struct {
	oldstyle bool
	hsFlags  uint16 // server handshake flags
	goMode   string // "", "unsup", "unknown", "blockreqd", "hugelen", "noexport", "structured-magic"
	export   string // the only export name accepted
	tflags   uint16
	blk      [3]uint32 // NBD_INFO_BLOCK_SIZE to send when non-zero
	disk     []byte
	// action decides how to answer a request: "" (normally), "error",
	// "short", "hangup", "silent", "badcookie", "structured".
	action func(cmd uint16, off uint64, n uint32) string

	mu         sync.Mutex
	cmds       []string
	cflags     uint32
	goBlockReq []bool // per NBD_OPT_GO: did the client request block sizes
	usedExport bool   // NBD_OPT_EXPORT_NAME was used
	done       chan struct{}
}

func (f *fake) log(s string) {
	f.mu.Lock()
	f.cmds = append(f.cmds, s)
	f.mu.Unlock()
}

func (f *fake) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

// start listens on a unix socket and serves one connection.
func (f *fake) start(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f.done = make(chan struct{})
	go func() {
		defer close(f.done)
		conn, err := l.Accept()
		l.Close()
		if err != nil {
			return
		}
		defer conn.Close()
		f.serve(conn)
	}()
	t.Cleanup(func() {
		l.Close()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			t.Error("fake server did not finish")
		}
	})
	return path
}

func put16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func put32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func put64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

func optReply(opt, typ uint32, data []byte) []byte {
	b := put64(nil, magicOptReply)
	b = put32(b, opt)
	b = put32(b, typ)
	b = put32(b, uint32(len(data)))
	return append(b, data...)
}

func (f *fake) serve(conn net.Conn) {
	size := uint64(len(f.disk))
	if f.oldstyle {
		b := put64(put64(nil, magicNBD), magicOldstyle)
		b = put64(b, size)
		b = put32(b, uint32(f.tflags))
		conn.Write(append(b, make([]byte, 124)...))
		return
	}
	conn.Write(put16(put64(put64(nil, magicNBD), magicOpts), f.hsFlags))
	var b4 [4]byte
	if _, err := io.ReadFull(conn, b4[:]); err != nil {
		return
	}
	f.mu.Lock()
	f.cflags = binary.BigEndian.Uint32(b4[:])
	f.mu.Unlock()
	for {
		var h [16]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return
		}
		if binary.BigEndian.Uint64(h[:8]) != magicOpts {
			return
		}
		opt, n := binary.BigEndian.Uint32(h[8:12]), binary.BigEndian.Uint32(h[12:16])
		data := make([]byte, n)
		if _, err := io.ReadFull(conn, data); err != nil {
			return
		}
		if opt == optExportName {
			f.mu.Lock()
			f.usedExport = true
			f.mu.Unlock()
			if string(data) != f.export {
				return // hang up: the only answer EXPORT_NAME has
			}
			r := put16(put64(nil, size), f.tflags)
			if f.cflags&flagNoZeroes == 0 {
				r = append(r, make([]byte, 124)...)
			}
			conn.Write(r)
			break
		}
		if opt != optGo {
			conn.Write(optReply(opt, repErrUnsup, nil))
			continue
		}
		nl := binary.BigEndian.Uint32(data[:4])
		name := string(data[4 : 4+nl])
		nreq := binary.BigEndian.Uint16(data[4+nl:])
		f.mu.Lock()
		f.goBlockReq = append(f.goBlockReq, nreq > 0)
		f.mu.Unlock()
		switch f.goMode {
		case "unsup":
			conn.Write(optReply(opt, repErrUnsup, nil))
			continue
		case "unknown":
			conn.Write(optReply(opt, repErrUnknown, []byte("no export here")))
			continue
		case "blockreqd":
			if nreq == 0 {
				conn.Write(optReply(opt, repErrBlockSReqd, []byte("ask for block sizes")))
				continue
			}
		case "hugelen":
			b := optReply(opt, repInfo, nil)
			binary.BigEndian.PutUint32(b[16:20], 1<<30)
			conn.Write(b)
			return
		case "structured-magic":
			conn.Write(append(put64(nil, 0x1234), make([]byte, 12)...))
			return
		}
		if name != f.export {
			conn.Write(optReply(opt, repErrUnknown, nil))
			continue
		}
		if f.goMode != "noexport" {
			conn.Write(optReply(opt, repInfo, put16(put64(put16(nil, infoExport), size), f.tflags)))
		}
		if f.blk[0] != 0 {
			conn.Write(optReply(opt, repInfo, put32(put32(put32(put16(nil, infoBlockSize), f.blk[0]), f.blk[1]), f.blk[2])))
		}
		conn.Write(optReply(opt, repAck, nil))
		if f.goMode == "noexport" {
			return
		}
		break
	}
	f.transmit(conn)
}

func (f *fake) transmit(conn net.Conn) {
	for {
		var h [28]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return
		}
		if binary.BigEndian.Uint32(h[:4]) != magicRequest {
			return
		}
		cmd := binary.BigEndian.Uint16(h[6:8])
		cookie := binary.BigEndian.Uint64(h[8:16])
		off := binary.BigEndian.Uint64(h[16:24])
		n := binary.BigEndian.Uint32(h[24:28])
		var payload []byte
		if cmd == cmdWrite {
			payload = make([]byte, n)
			if _, err := io.ReadFull(conn, payload); err != nil {
				return
			}
		}
		f.log(cmdName(cmd))
		if cmd == cmdDisc {
			return
		}
		act := ""
		if f.action != nil {
			act = f.action(cmd, off, n)
		}
		reply := put64(put32(put32(nil, magicSimple), 0), cookie)
		switch act {
		case "error":
			binary.BigEndian.PutUint32(reply[4:8], 5)
			conn.Write(reply)
			continue
		case "hangup":
			return
		case "silent":
			io.Copy(io.Discard, conn) // until the client gives up
			return
		case "badcookie":
			binary.BigEndian.PutUint64(reply[8:16], cookie+7)
			conn.Write(reply)
			continue
		case "structured":
			binary.BigEndian.PutUint32(reply[0:4], magicStructured)
			conn.Write(reply)
			continue
		}
		switch cmd {
		case cmdRead:
			data := f.disk[off : off+uint64(n)]
			if act == "short" {
				conn.Write(append(reply, data[:len(data)/2]...))
				return
			}
			conn.Write(append(reply, data...))
		case cmdWrite:
			copy(f.disk[off:], payload)
			conn.Write(reply)
		case cmdWriteZeroes:
			clear(f.disk[off : off+uint64(n)])
			conn.Write(reply)
		default:
			conn.Write(reply)
		}
	}
}

const allFlags = FlagHasFlags | FlagSendFlush | FlagSendWriteZeroes

func dialFake(t *testing.T, f *fake, opts Options) (*Client, error) {
	t.Helper()
	path := f.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Dial(ctx, "unix", path, opts)
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/4096)
	}
	return b
}

func TestHandshakeVariants(t *testing.T) {
	cases := []struct {
		name       string
		f          *fake
		wantExport bool
		wantBlkReq []bool
	}{
		{"go", &fake{hsFlags: flagFixedNewstyle | flagNoZeroes}, false, []bool{false}},
		{"go-unsup-fallback", &fake{hsFlags: flagFixedNewstyle | flagNoZeroes, goMode: "unsup"}, true, []bool{false}},
		{"go-unsup-fallback-zeroes", &fake{hsFlags: flagFixedNewstyle, goMode: "unsup"}, true, []bool{false}},
		{"not-fixed", &fake{hsFlags: 0}, true, nil},
		{"blocksize-required", &fake{hsFlags: flagFixedNewstyle | flagNoZeroes, goMode: "blockreqd", blk: [3]uint32{512, 4096, 64 << 10}}, false, []bool{false, true}},
		{"named-export", &fake{hsFlags: flagFixedNewstyle, export: "disk0"}, false, []bool{false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			f.tflags = allFlags
			f.disk = pattern(1 << 20)
			c, err := dialFake(t, f, Options{Export: f.export})
			if err != nil {
				t.Fatal(err)
			}
			if c.Size() != 1<<20 {
				t.Errorf("size %d", c.Size())
			}
			if c.Flags() != allFlags {
				t.Errorf("flags %#x", c.Flags())
			}
			buf := make([]byte, 8192)
			if _, err := c.ReadAt(buf, 4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, f.disk[4096:4096+8192]) {
				t.Error("read mismatch")
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			<-f.done
			if f.usedExport != tc.wantExport {
				t.Errorf("EXPORT_NAME used: %v", f.usedExport)
			}
			if len(f.goBlockReq) != len(tc.wantBlkReq) {
				t.Errorf("GO block size requests %v, want %v", f.goBlockReq, tc.wantBlkReq)
			}
			if want := uint32(f.hsFlags & (flagFixedNewstyle | flagNoZeroes)); f.cflags != want {
				t.Errorf("client flags %#x, want %#x", f.cflags, want)
			}
			if cmds := f.commands(); cmds[len(cmds)-1] != "DISC" {
				t.Errorf("commands %v", cmds)
			}
			if f.blk[0] != 0 {
				if mn, mx := c.BlockSizes(); mn != 512 || mx != 64<<10 {
					t.Errorf("block sizes %d %d", mn, mx)
				}
				if _, err := c.ReadAt(buf[:100], 0); err == nil {
					t.Error("read after close succeeded")
				}
			}
		})
	}
}

func TestHandshakeFailures(t *testing.T) {
	cases := []struct {
		name string
		f    *fake
		want string
	}{
		{"oldstyle", &fake{oldstyle: true}, "oldstyle"},
		{"unknown-export", &fake{hsFlags: flagFixedNewstyle, goMode: "unknown"}, "NBD_REP_ERR_UNKNOWN"},
		{"export-name-hangup", &fake{hsFlags: 0, export: "other"}, "no such export"},
		{"huge-reply-length", &fake{hsFlags: flagFixedNewstyle, goMode: "hugelen"}, "exceeds"},
		{"ack-without-export", &fake{hsFlags: flagFixedNewstyle, goMode: "noexport"}, "without NBD_INFO_EXPORT"},
		{"bad-reply-magic", &fake{hsFlags: flagFixedNewstyle, goMode: "structured-magic"}, "bad option reply magic"},
		{"bad-block-sizes", &fake{hsFlags: flagFixedNewstyle, blk: [3]uint32{3, 4096, 1 << 20}}, "invalid block sizes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			f.disk = make([]byte, 4096)
			c, err := dialFake(t, f, Options{})
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestHandshakeContextCancel(t *testing.T) {
	// A server that accepts and says nothing: the context must end it.
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = Dial(ctx, "unix", path, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestReadWriteChunking(t *testing.T) {
	f := fake{hsFlags: flagFixedNewstyle | flagNoZeroes, tflags: allFlags, blk: [3]uint32{1, 4096, 64 << 10}}
	f.disk = make([]byte, 1<<20)
	c, err := dialFake(t, &f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := pattern(300 << 10)
	if n, err := c.WriteAt(data, 1000); err != nil || n != len(data) {
		t.Fatal(n, err)
	}
	if !bytes.Equal(f.disk[1000:1000+len(data)], data) {
		t.Fatal("disk mismatch after write")
	}
	got := make([]byte, len(data))
	if n, err := c.ReadAt(got, 1000); err != nil || n != len(got) {
		t.Fatal(n, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read mismatch")
	}
	writes := 0
	for _, s := range f.commands() {
		if s == "WRITE" {
			writes++
		}
	}
	if want := (len(data) + (64<<10 - 1)) / (64 << 10); writes != want {
		t.Errorf("%d WRITE requests, want %d (64 KiB max block size)", writes, want)
	}
	// Reading across the end: bytes up to the end, then io.EOF.
	tail := make([]byte, 100)
	n, err := c.ReadAt(tail, 1<<20-40)
	if n != 40 || err != io.EOF {
		t.Errorf("read across end: %d, %v", n, err)
	}
	if _, err := c.ReadAt(tail, 1<<20); err != io.EOF {
		t.Errorf("read at end: %v", err)
	}
	if _, err := c.WriteAt(tail, 1<<20-40); err == nil || !strings.Contains(err.Error(), "beyond the end") {
		t.Errorf("write across end: %v", err)
	}
	// WriteZeroes with the flag: WRITE_ZEROES requests.
	if err := c.WriteZeroes(2000, 5000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.disk[2000:7000], make([]byte, 5000)) {
		t.Error("zeroes not written")
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	cmds := f.commands()
	if cmds[len(cmds)-2] != "WRITE_ZEROES" || cmds[len(cmds)-1] != "FLUSH" {
		t.Errorf("commands end %v", cmds[len(cmds)-2:])
	}
}

func TestWriteZeroesFallback(t *testing.T) {
	f := fake{hsFlags: flagFixedNewstyle | flagNoZeroes, tflags: FlagHasFlags}
	f.disk = pattern(1 << 20)
	c, err := dialFake(t, &f, Options{MaxRequest: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteZeroes(100, 10000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.disk[100:10100], make([]byte, 10000)) || f.disk[99] == 0 && f.disk[10100] == 0 {
		t.Error("zeroes not written exactly")
	}
	if err := c.Flush(); err != nil { // no FLUSH flag: no request
		t.Fatal(err)
	}
	cmds := f.commands()
	if len(cmds) != 3 || cmds[0] != "WRITE" {
		t.Errorf("commands %v, want 3 WRITEs", cmds)
	}
}

func TestReadOnlyExport(t *testing.T) {
	f := fake{hsFlags: flagFixedNewstyle, tflags: allFlags | FlagReadOnly}
	f.disk = make([]byte, 4096)
	c, err := dialFake(t, &f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write: %v", err)
	}
	if err := c.WriteZeroes(0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write zeroes: %v", err)
	}
}

func TestServerErrorReply(t *testing.T) {
	f := fake{hsFlags: flagFixedNewstyle, tflags: allFlags,
		action: func(cmd uint16, off uint64, n uint32) string {
			if off == 8192 {
				return "error"
			}
			return ""
		}}
	f.disk = make([]byte, 64<<10)
	c, err := dialFake(t, &f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.WriteAt(make([]byte, 512), 8192)
	var ne *Error
	if !errors.As(err, &ne) || ne.Code != 5 || ne.Command != "WRITE" || ne.Offset != 8192 || ne.Length != 512 {
		t.Fatalf("err %v", err)
	}
	for _, s := range []string{"WRITE", "8192", "EIO"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q lacks %q", err, s)
		}
	}
	if _, err := c.ReadAt(make([]byte, 512), 8192); !errors.As(err, &ne) || ne.Command != "READ" {
		t.Fatalf("read err %v", err)
	}
	// The connection is still usable.
	if _, err := c.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
}

func TestTransportFailures(t *testing.T) {
	cases := []struct {
		act  string
		want string
	}{
		{"short", "unexpected EOF"},
		{"hangup", "reading reply"},
		{"badcookie", "cookie"},
		{"structured", "structured reply"},
		{"silent", "timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.act, func(t *testing.T) {
			f := fake{hsFlags: flagFixedNewstyle, tflags: allFlags,
				action: func(cmd uint16, off uint64, n uint32) string {
					if cmd == cmdRead && off == 4096 {
						return tc.act
					}
					return ""
				}}
			f.disk = make([]byte, 64<<10)
			c, err := dialFake(t, &f, Options{Timeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = c.ReadAt(make([]byte, 4096), 4096)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "READ at offset 4096") {
				t.Fatalf("err %v, want mention of %q", err, tc.want)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v", d)
			}
			// Every later call fails at once, naming the first failure.
			if _, err := c.ReadAt(make([]byte, 1), 0); err == nil || !strings.Contains(err.Error(), "earlier failure") {
				t.Errorf("later read: %v", err)
			}
			if err := c.Flush(); err == nil {
				t.Error("later flush succeeded")
			}
			if err := c.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			if err := c.Flush(); !errors.Is(err, ErrClosed) {
				t.Errorf("flush after close: %v", err)
			}
		})
	}
}

func TestServerGoneBeforeRequest(t *testing.T) {
	f := fake{hsFlags: flagFixedNewstyle, tflags: allFlags,
		action: func(cmd uint16, off uint64, n uint32) string { return "hangup" }}
	f.disk = make([]byte, 64<<10)
	c, err := dialFake(t, &f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err == nil { // server hangs up on the flush
		t.Fatal("flush succeeded")
	}
	if _, err := c.WriteAt(make([]byte, 1<<16), 0); err == nil {
		t.Fatal("write succeeded")
	}
	c.Close()
}
