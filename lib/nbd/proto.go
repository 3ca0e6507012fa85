package nbd

import (
	"fmt"
	"syscall"
)

// Magic numbers of the protocol (all big-endian on the wire).
const (
	magicNBD         = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpts        = 0x49484156454f5054 // "IHAVEOPT"
	magicOldstyle    = 0x00420281861253
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimple      = 0x67446698
	magicStructured  = 0x668e33ef
	maxOptReplyLen   = 64 << 10 // cap on an option reply payload we accept
	maxStringLen     = 4096     // protocol limit for names and messages
	exportNameZeroes = 124      // padding after NBD_OPT_EXPORT_NAME's reply
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName = 1
	optAbort      = 2
	optGo         = 7
)

// Option reply types.
const (
	repAck           = 1
	repInfo          = 3
	repErrBit        = 1 << 31
	repErrUnsup      = repErrBit | 1
	repErrPolicy     = repErrBit | 2
	repErrInvalid    = repErrBit | 3
	repErrPlatform   = repErrBit | 4
	repErrTLSReqd    = repErrBit | 5
	repErrUnknown    = repErrBit | 6
	repErrShutdown   = repErrBit | 7
	repErrBlockSReqd = repErrBit | 8
	repErrTooBig     = repErrBit | 9
)

// Information types for NBD_REP_INFO / NBD_OPT_GO.
const (
	infoExport    = 0
	infoBlockSize = 3
)

// Transmission flags, as returned by Client.Flags.
const (
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagRotational      = 1 << 4
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagSendDF          = 1 << 7
	FlagCanMultiConn    = 1 << 8
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdWriteZeroes = 6
)

func cmdName(cmd uint16) string {
	switch cmd {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	}
	return fmt.Sprintf("CMD(%d)", cmd)
}

func optName(opt uint32) string {
	switch opt {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optGo:
		return "NBD_OPT_GO"
	}
	return fmt.Sprintf("NBD_OPT(%d)", opt)
}

func repName(rep uint32) string {
	switch rep {
	case repAck:
		return "NBD_REP_ACK"
	case repInfo:
		return "NBD_REP_INFO"
	case repErrUnsup:
		return "NBD_REP_ERR_UNSUP"
	case repErrPolicy:
		return "NBD_REP_ERR_POLICY"
	case repErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case repErrPlatform:
		return "NBD_REP_ERR_PLATFORM"
	case repErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD"
	case repErrUnknown:
		return "NBD_REP_ERR_UNKNOWN"
	case repErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN"
	case repErrBlockSReqd:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case repErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	}
	return fmt.Sprintf("reply type %#x", rep)
}

// NBD error codes (the values are the Linux errno values the protocol
// borrowed).
var errNames = map[uint32]string{
	1:   "EPERM",
	5:   "EIO",
	12:  "ENOMEM",
	22:  "EINVAL",
	28:  "ENOSPC",
	75:  "EOVERFLOW",
	95:  "ENOTSUP",
	108: "ESHUTDOWN",
}

// Error is a server's error reply to one request. The connection remains
// usable after it.
type Error struct {
	Command string // "READ", "WRITE", "FLUSH", "WRITE_ZEROES"
	Offset  uint64
	Length  uint64
	Code    uint32 // NBD error value, e.g. 5 (EIO)
}

func (e *Error) Error() string {
	name := errNames[e.Code]
	if name == "" {
		name = "unknown"
	}
	return fmt.Sprintf("nbd: %s at offset %d, length %d: server error %d (%s)",
		e.Command, e.Offset, e.Length, e.Code, name)
}

// Errno returns the error code as a syscall.Errno (NBD uses Linux values).
func (e *Error) Errno() syscall.Errno { return syscall.Errno(e.Code) }
