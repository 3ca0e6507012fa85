package overlay

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"cloudlet/format"
	"cloudlet/lib/sign"
)

// Signed overlays (format/SPEC.md section 6.1): a SIGNER record right after
// the HEADER names the key, a HEAD_SIGNATURE right after the MANIFEST signs
// the sha256 of every byte before it (the head), and a SIGNATURE record
// right before END signs the sha256 of every byte before it.

// Summer returns the sha256 of the bytes a format.Writer has flushed so
// far (sign.HashWriter under the Writer).
type Summer interface{ Sum() []byte }

// PackSigned is Pack followed by signing with key: the overlay gets a
// SIGNER record after its HEADER, a HEAD_SIGNATURE after its MANIFEST
// (unless o.NoManifest) and a SIGNATURE before END. w must be fresh and
// write to out, which hashes what w flushes. The caller closes w, which
// writes END.
func PackSigned(ctx context.Context, r *format.Reader, w *format.Writer, out Summer, o PackOptions, key *sign.PrivateKey) error {
	return packOverlay(ctx, r, w, o, &signing{key: key, out: out})
}

// VerifyOptions is the signature policy of overlay-apply.
type VerifyOptions struct {
	// Trusted are the keys whose signatures are accepted. A signed overlay
	// whose signer is not among them is refused.
	Trusted sign.Keyring
	// Require refuses unsigned overlays.
	Require bool
	// TrustedFrom names where Trusted came from, for messages.
	TrustedFrom string
}

// SignatureError is a refused signature. KeyID is the signer's key ID, or
// empty for an unsigned overlay.
type SignatureError struct {
	KeyID  string
	Offset int64 // of the frame at fault in the overlay
	Msg    string
	// Policy is true when the overlay is intact but not acceptable
	// (unsigned, unknown signer), false when it was altered.
	Policy bool
}

func (e *SignatureError) Error() string {
	who := "unsigned overlay"
	if e.KeyID != "" {
		who = "overlay signed by key " + e.KeyID
	}
	return fmt.Sprintf("signature: %s: %s", who, e.Msg)
}

// ExitStatus: 1 for a refused but intact overlay, 3 for an altered one
// (lib/cliutil exit codes).
func (e *SignatureError) ExitStatus() int {
	if e.Policy {
		return 1
	}
	return 3
}

// Verifier reads an overlay, passing its bytes on unchanged, and checks
// its signature on the way (it parses the frame layout itself and hashes
// every byte). Read it with a format.Reader, run Apply, then call Check.
//
// The bytes up to the HEADER are only passed on once the frame after it
// was seen, so an unsigned overlay (with Require) or an unknown signer is
// refused before Apply reads the HEADER. The last byte of a HEAD_SIGNATURE
// is only passed on after it verified, so Apply reads no SEGMENT of an
// overlay whose signed head was altered. The END frame is only passed on
// after the SIGNATURE verified, so a format.Reader over a Verifier never
// reports a complete overlay whose signature did not verify.
type Verifier struct {
	r   io.Reader
	o   VerifyOptions
	sha hash.Hash
	err error

	held    []byte // bytes read but not yet passed on (while deciding)
	decided bool
	// holding: with Require, the bytes from the MANIFEST's tail on are
	// held until the HEAD_SIGNATURE verified, so the Reader above never
	// sees a complete MANIFEST (nor expands its ranges) from an unsigned
	// head. holdAt is where in the buffer scan last saw holding start
	// (-1: not in it).
	holding  bool
	holdAt   int
	heldFrom int // index in held where holding began (-1: nothing held back)

	// frame scanner
	off     int64 // stream offset of the next byte scanned
	part    int   // 0 preamble, 1 head, 2 payload, 3 tail, 4 after END
	need    int64 // bytes left in the current part
	head    [format.FrameHeadSize]byte
	headN   int
	frame   int64 // current frame number, 1 = HEADER
	start   int64 // offset of the current frame
	typ     format.Type
	keep    []byte      // payload of the current SIGNER, HEAD_SIGNATURE or SIGNATURE
	before  []byte      // sha256 of the bytes before the current frame
	prevSig bool        // the previous frame was the SIGNATURE
	prevTyp format.Type // type of the previous frame

	signer       *sign.PublicKey
	signerID     string
	headVerified bool // the HEAD_SIGNATURE verified
	verified     bool // the SIGNATURE verified
	sawEnd       bool
}

// NewVerifier returns a Verifier reading r with policy o.
func NewVerifier(r io.Reader, o VerifyOptions) *Verifier {
	return &Verifier{r: r, o: o, sha: sha256.New(), need: format.PreambleSize, heldFrom: -1}
}

// Signer returns the signer's key, once the SIGNER was read and trusted.
func (v *Verifier) Signer() *sign.PublicKey { return v.signer }

// HeadSigner returns the key ID of the HEAD_SIGNATURE once it verified
// (the overlay's HEADER, SIGNER and MANIFEST are then as the signer made
// them), else "".
func (v *Verifier) HeadSigner() string {
	if !v.headVerified {
		return ""
	}
	return v.signerID
}

// Err returns the error the Verifier stopped with, if any.
func (v *Verifier) Err() error {
	var se *SignatureError
	if errors.As(v.err, &se) {
		return se
	}
	return nil
}

// Check returns nil if the overlay read through v is acceptable: call it
// after Apply returned nil, before writing the output's END.
func (v *Verifier) Check() error {
	if err := v.Err(); err != nil {
		return err
	}
	if !v.sawEnd {
		return &SignatureError{KeyID: v.signerID, Offset: v.off, Msg: "the overlay was not read to its END, so its signature was not checked"}
	}
	if v.signerID != "" && !v.verified {
		return &SignatureError{KeyID: v.signerID, Offset: v.off, Msg: "no valid SIGNATURE before END"}
	}
	if v.o.Require && !v.verified {
		return &SignatureError{Offset: v.off, Policy: true, Msg: "signatures are required (--require-signature); sign it with overlay-pack --sign"}
	}
	return nil
}

func (v *Verifier) fail(msg string, policy bool) error {
	v.err = &SignatureError{KeyID: v.signerID, Offset: v.start, Msg: msg, Policy: policy}
	return v.err
}

func (v *Verifier) Read(p []byte) (int, error) {
	for (!v.decided || v.holding) && v.err == nil {
		// Hold bytes until the frame after the HEADER decided whether the
		// overlay is signed by a trusted key, and (holding) until a
		// required head signature verified.
		if !v.holding && len(v.held) > format.MaxMetaPayload+4096 {
			v.decided = true // a HEADER this large is refused by the reader anyway
			break
		}
		var buf [64 << 10]byte
		n, err := v.r.Read(buf[:])
		k := v.scan(buf[:n])
		if v.holding && v.holdAt >= 0 && v.heldFrom < 0 {
			v.heldFrom = len(v.held) + v.holdAt
		}
		v.held = append(v.held, buf[:k]...)
		if k < n { // refused: pass on nothing, not even the HEADER
			v.held = nil
			break
		}
		if err != nil {
			v.err = err
			v.decided = true
		}
	}
	if !v.holding {
		v.heldFrom = -1 // the head signature verified: all may go
	} else if v.heldFrom >= 0 && v.heldFrom <= len(v.held) {
		// Stopped (refused, cut short) while holding: the MANIFEST's
		// tail never goes, so no reader sees it whole.
		v.held, v.heldFrom = v.held[:v.heldFrom], -1
	}
	if len(v.held) > 0 {
		n := copy(p, v.held)
		v.held = v.held[n:]
		return n, nil
	}
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	k := v.scan(p[:n])
	if v.holding && v.holdAt >= 0 {
		// The MANIFEST's tail began in p: keep it (and what follows)
		// back until the HEAD_SIGNATURE verified; dropped if the
		// overlay is refused or ends first.
		if v.err == nil {
			v.held, v.heldFrom = append(v.held, p[v.holdAt:k]...), 0
			if err != nil {
				v.err = err
			}
		}
		return v.holdAt, nil
	}
	if k < n {
		return k, nil // the next Read returns v.err
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

// scan hashes and parses b, returning how many bytes may be passed on (all
// of them unless the overlay was refused).
func (v *Verifier) scan(b []byte) int {
	done := 0
	v.holdAt = -1
	for done < len(b) && v.err == nil {
		if v.part == 4 { // after END: the reader reports trailing data
			v.sha.Write(b[done:])
			v.off += int64(len(b) - done)
			return len(b)
		}
		if v.part == 1 && v.headN == 0 {
			v.start = v.off
			v.frame++
			v.before = v.sha.Sum(v.before[:0])
		}
		var n int
		switch v.part {
		case 1:
			n = copy(v.head[v.headN:], b[done:])
			v.headN += n
		default:
			n = int(min(int64(len(b)-done), v.need))
			if v.part == 2 && v.keep != nil {
				v.keep = append(v.keep, b[done:done+n]...)
			}
			v.need -= int64(n)
		}
		// Refusals happen before the byte that completes a part is passed.
		ok := true
		switch {
		case v.part == 0 && v.need == 0:
			v.part, v.headN = 1, 0
		case v.part == 1 && v.headN == format.FrameHeadSize:
			ok = v.frameHead()
		case v.part == 2 && v.need == 0:
			ok = v.payload()
		case v.part == 3 && v.need == 0:
			v.part, v.headN = 1, 0
			if v.typ == format.TypeEnd {
				v.part, v.sawEnd = 4, true
			}
		}
		if !ok {
			return done
		}
		v.sha.Write(b[done : done+n])
		v.off += int64(n)
		done += n
		if v.holding && v.holdAt < 0 {
			v.holdAt = done
		}
	}
	return done
}

// frameHead looks at a frame's type and length.
func (v *Verifier) frameHead() bool {
	v.typ = format.Type(v.head[0])
	flags := v.head[1]
	v.need = int64(binary.LittleEndian.Uint32(v.head[4:]))
	v.part, v.keep = 2, nil
	at := fmt.Sprintf("frame %d at offset %d", v.frame, v.start)
	if v.prevSig && v.typ != format.TypeEnd {
		v.fail(fmt.Sprintf("the SIGNATURE is followed by a %s record (%s), not by END: records were added or the signature was moved", v.typ, at), false)
		return false
	}
	if v.holding && v.typ != format.TypeHeadSignature {
		v.fail(fmt.Sprintf("signatures are required (--require-signature) and the overlay's MANIFEST is not signed: a %s record (%s) follows it, not a HEAD_SIGNATURE; its head is refused before its ranges are read. Pack it again with overlay-pack --sign", v.typ, at), true)
		return false
	}
	if v.frame == 2 {
		if v.typ != format.TypeSigner && v.typ != format.TypeError {
			v.decided = true
			if v.o.Require {
				v.fail("signatures are required (--require-signature) and the overlay has no SIGNER record after its HEADER; sign it with overlay-pack --sign", true)
				return false
			}
		}
	}
	switch v.typ {
	case format.TypeSigner, format.TypeSignature, format.TypeHeadSignature:
		if flags != 0 {
			v.fail(fmt.Sprintf("%s record (%s) has flags %#x, want 0", v.typ, at, flags), false)
			return false
		}
		if v.typ == format.TypeSigner && v.frame != 2 {
			v.fail(fmt.Sprintf("SIGNER record at %s: it must directly follow the HEADER; the overlay was altered (signer record moved or duplicated)", at), false)
			return false
		}
		if v.typ == format.TypeSignature && v.signerID == "" {
			v.fail(fmt.Sprintf("SIGNATURE record at %s, but no SIGNER record after the HEADER: the overlay was altered", at), false)
			return false
		}
		if v.typ == format.TypeSignature && v.verified {
			v.fail(fmt.Sprintf("second SIGNATURE record at %s: the overlay was altered (signature duplicated)", at), false)
			return false
		}
		if v.typ == format.TypeHeadSignature && v.signerID == "" {
			v.fail(fmt.Sprintf("HEAD_SIGNATURE record at %s, but no SIGNER record after the HEADER: the overlay was altered", at), false)
			return false
		}
		if v.typ == format.TypeHeadSignature && (v.frame != 4 || v.prevTyp != format.TypeManifest) {
			v.fail(fmt.Sprintf("HEAD_SIGNATURE record at %s: it must directly follow the MANIFEST, which directly follows the SIGNER; the overlay was altered (head signature moved or duplicated)", at), false)
			return false
		}
		if v.need > sign.SignatureSize {
			v.fail(fmt.Sprintf("%s record at %s is %d bytes long: %v", v.typ, at, v.need, sign.ErrMalformed), false)
			return false
		}
		v.keep = make([]byte, 0, v.need)
	case format.TypeEnd:
		if v.signerID != "" && !v.verified {
			v.fail(fmt.Sprintf("END at offset %d without a SIGNATURE record before it: the signature was stripped", v.start), false)
			return false
		}
	}
	if v.need == 0 {
		return v.payload()
	}
	return true
}

// payload handles a complete payload: SIGNER, HEAD_SIGNATURE or
// SIGNATURE content.
func (v *Verifier) payload() bool {
	v.part, v.need = 3, format.FrameTailSize
	v.prevSig, v.prevTyp = false, v.typ
	at := fmt.Sprintf("frame %d at offset %d", v.frame, v.start)
	switch v.typ {
	case format.TypeManifest:
		// A signed overlay's MANIFEST (third frame): with Require, held
		// until its HEAD_SIGNATURE verified (SPEC.md section 6.1).
		v.holding = v.o.Require && v.signer != nil && v.frame == 3
	case format.TypeSigner:
		id, err := sign.ParseSigner(v.keep)
		if err != nil {
			v.fail(fmt.Sprintf("SIGNER at %s: %v", at, err), false)
			return false
		}
		v.signerID, v.decided = id, true
		k, ok := v.o.Trusted[id]
		if !ok {
			v.fail(fmt.Sprintf("key %s is not trusted (trusted keys%s: %s); add its .pub file to the trusted keys folder if you trust its owner", id, v.from(), strings.Join(v.o.Trusted.IDs(), ", ")), true)
			return false
		}
		v.signer = k
	case format.TypeHeadSignature, format.TypeSignature:
		id, sig, err := sign.ParseSignature(v.keep)
		if err != nil {
			v.fail(fmt.Sprintf("%s at %s: %v", v.typ, at, err), false)
			return false
		}
		if id != v.signerID {
			v.fail(fmt.Sprintf("%s at %s is by key %s, but the SIGNER record names key %s: the overlay was altered", v.typ, at, id, v.signerID), false)
			return false
		}
		what, check := "the signature", sign.Verify
		if v.typ == format.TypeHeadSignature {
			what, check = "the head signature", verifyHead
		}
		if !check(v.signer, v.before, sig) {
			file := ""
			if v.signer.File != "" {
				file = " from " + v.signer.File
			}
			v.fail(fmt.Sprintf("%s (%s) does not verify with key %s%s: the overlay was altered after it was signed", what, at, id, file), false)
			return false
		}
		if v.typ == format.TypeHeadSignature {
			v.headVerified, v.holding = true, false
		} else {
			v.verified, v.prevSig = true, true
		}
	}
	return true
}

func (v *Verifier) from() string {
	if v.o.TrustedFrom == "" {
		return ""
	}
	return " in " + v.o.TrustedFrom
}
