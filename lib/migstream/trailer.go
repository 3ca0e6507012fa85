package migstream

import (
	"bytes"
	"encoding/binary"
)

// maxTrailerCandidates bounds the bookkeeping of trailerCheck.
const maxTrailerCandidates = 4096

// trailerCheck watches the verbatim tail of a stream for its end marker:
// QEMU_VM_EOF (0x00), QEMU_VM_VMDESCRIPTION (0x06), be32 length, then a
// JSON object of that length that ends the stream. Device state has no
// framing, so every "00 06 len {" seen is a candidate end position.
type trailerCheck struct {
	n     int64   // bytes seen
	prev  [6]byte // the last 6 bytes seen, most recent last
	last  byte
	cands []int64 // stream lengths at which a candidate description ends
}

func (t *trailerCheck) Write(p []byte) {
	if len(p) == 0 {
		return
	}
	back := func(k, d int) byte { // the byte d positions before p[k]
		if k-d >= 0 {
			return p[k-d]
		}
		return t.prev[6+k-d]
	}
	for i := 0; i < len(p); {
		j := bytes.IndexByte(p[i:], '{')
		if j < 0 {
			break
		}
		k := i + j
		abs := t.n + int64(k)
		if abs >= 6 && back(k, 6) == secEOF && back(k, 5) == secVMDescription {
			l := binary.BigEndian.Uint32([]byte{back(k, 4), back(k, 3), back(k, 2), back(k, 1)})
			if l >= 2 && l <= MaxVMDesc && len(t.cands) < maxTrailerCandidates {
				t.cands = append(t.cands, abs+int64(l))
			}
		}
		i = k + 1
	}
	if len(p) >= 6 {
		copy(t.prev[:], p[len(p)-6:])
	} else {
		copy(t.prev[:], t.prev[len(p):])
		copy(t.prev[6-len(p):], p)
	}
	t.n += int64(len(p))
	t.last = p[len(p)-1]
	kept := t.cands[:0]
	for _, c := range t.cands {
		if c >= t.n {
			kept = append(kept, c)
		}
	}
	t.cands = kept
}

// complete reports whether the bytes seen end with a VM description.
func (t *trailerCheck) complete() bool {
	if t.last != '}' {
		return false
	}
	for _, c := range t.cands {
		if c == t.n {
			return true
		}
	}
	return false
}
