package delta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Methods, as in format.DeltaXOR and format.DeltaOps (SPEC.md section 2.4).
// Raw is Best's answer when storing the page itself is smallest.
const (
	Raw uint8 = 0
	XOR uint8 = 1
	Ops uint8 = 2
)

// OPS program items.
const (
	opCopy   = 0
	opInsert = 1
	opSkip   = 2
)

// minMatch is the shortest run the OPS encoder turns into a copy: below it
// the copy and skip items cost about as much as the literals they replace.
const minMatch = 8

// hashBits sizes the encoder's table of 8-byte base windows.
const hashBits = 12

// ErrCorrupt is wrapped by every Decode error.
var ErrCorrupt = errors.New("delta: corrupt delta")

// Encode returns the delta of method XOR or Ops that turns base into target.
// base and target must have the same length.
func Encode(method uint8, base, target []byte) ([]byte, error) {
	if len(base) != len(target) {
		return nil, fmt.Errorf("delta: base is %d bytes, target %d; a delta is against the same-offset range, so they must be equal", len(base), len(target))
	}
	switch method {
	case XOR:
		out := make([]byte, len(target))
		xorInto(out, base, target)
		return out, nil
	case Ops:
		return encodeOps(nil, base, target), nil
	}
	return nil, fmt.Errorf("delta: unknown method %d (want %d XOR or %d OPS)", method, XOR, Ops)
}

// Decode writes into out the content described by delta of the given
// method against base, the same-offset base range. It fails unless the
// delta produces exactly len(out) bytes; it never reads or writes outside
// base, delta and out.
func Decode(method uint8, base, delta, out []byte) error {
	switch method {
	case XOR:
		if len(delta) != len(out) || len(base) < len(out) {
			return fmt.Errorf("%w: XOR delta of %d bytes with a base of %d for %d bytes (all three must be equal)", ErrCorrupt, len(delta), len(base), len(out))
		}
		xorInto(out, base[:len(out)], delta)
		return nil
	case Ops:
		return decodeOps(base, delta, out)
	}
	return fmt.Errorf("%w: unknown method %d (want %d XOR or %d OPS)", ErrCorrupt, method, XOR, Ops)
}

func xorInto(dst, a, b []byte) {
	i := 0
	for ; i+8 <= len(dst); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(a[i:])^binary.LittleEndian.Uint64(b[i:]))
	}
	for ; i < len(dst); i++ {
		dst[i] = a[i] ^ b[i]
	}
}

func decodeOps(base, prog, out []byte) error {
	o, j, pc := 0, 0, 0
	for pc < len(prog) {
		at := pc
		op := prog[pc]
		pc++
		n, k := binary.Uvarint(prog[pc:])
		if k <= 0 {
			return fmt.Errorf("%w: OPS item at byte %d: truncated or overlong length", ErrCorrupt, at)
		}
		pc += k
		if n == 0 {
			return fmt.Errorf("%w: OPS item at byte %d: op %d of length 0", ErrCorrupt, at, op)
		}
		switch op {
		case opCopy:
			if n > uint64(len(out)-o) || n > uint64(len(base)-j) {
				return fmt.Errorf("%w: OPS item at byte %d: copy of %d bytes at base %d, output %d overruns base (%d) or output (%d)", ErrCorrupt, at, n, j, o, len(base), len(out))
			}
			copy(out[o:], base[j:j+int(n)])
			o, j = o+int(n), j+int(n)
		case opInsert:
			if n > uint64(len(out)-o) || n > uint64(len(prog)-pc) {
				return fmt.Errorf("%w: OPS item at byte %d: insert of %d bytes overruns the output (%d left) or the delta (%d left)", ErrCorrupt, at, n, len(out)-o, len(prog)-pc)
			}
			copy(out[o:], prog[pc:pc+int(n)])
			o, pc = o+int(n), pc+int(n)
		case opSkip:
			if n > uint64(len(base)-j) {
				return fmt.Errorf("%w: OPS item at byte %d: skip of %d bytes at base %d overruns the base (%d)", ErrCorrupt, at, n, j, len(base))
			}
			j += int(n)
		default:
			return fmt.Errorf("%w: OPS item at byte %d: unknown op %d", ErrCorrupt, at, op)
		}
	}
	if o != len(out) {
		return fmt.Errorf("%w: OPS program produced %d bytes, want %d", ErrCorrupt, o, len(out))
	}
	return nil
}

// matchLen returns the length of the common prefix of a and b.
func matchLen(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for ; i+8 <= n; i += 8 {
		if x := binary.LittleEndian.Uint64(a[i:]) ^ binary.LittleEndian.Uint64(b[i:]); x != 0 {
			return i + bits.TrailingZeros64(x)/8
		}
	}
	for ; i < n && a[i] == b[i]; i++ {
	}
	return i
}

func hash8(b []byte) uint32 {
	return uint32((binary.LittleEndian.Uint64(b) * 0x9E3779B97F4A7C15) >> (64 - hashBits))
}

func item(dst []byte, op byte, n int) []byte {
	dst = append(dst, op)
	return binary.AppendUvarint(dst, uint64(n))
}

// encodeOps appends to dst an OPS program turning base into target. It
// tries, at each target position, a match at the base cursor, at the same
// position (in-place edits), then at the earliest base position with the
// same 8-byte window (shifted content); anything else becomes literals.
func encodeOps(dst, base, target []byte) []byte {
	var table [1 << hashBits]int32 // base position + 1 of a window; 0 = none
	for p := len(base) - 8; p >= 0; p-- {
		table[hash8(base[p:])] = int32(p + 1)
	}
	i, j, lit := 0, 0, 0
	emit := func(skip, m int) {
		if lit < i {
			dst = item(dst, opInsert, i-lit)
			dst = append(dst, target[lit:i]...)
		}
		if skip > 0 {
			dst = item(dst, opSkip, skip)
		}
		dst = item(dst, opCopy, m)
		i, j = i+m, j+skip+m
		lit = i
	}
	for i < len(target) {
		if j < len(base) {
			if m := matchLen(base[j:], target[i:]); m >= minMatch {
				emit(0, m)
				continue
			}
		}
		if i > j && i < len(base) {
			if m := matchLen(base[i:], target[i:]); m >= minMatch {
				emit(i-j, m)
				continue
			}
		}
		if i+8 <= len(target) {
			if p := int(table[hash8(target[i:])]) - 1; p > j {
				if m := matchLen(base[p:], target[i:]); m >= minMatch {
					emit(p-j, m)
					continue
				}
			}
		}
		i++
	}
	if lit < len(target) {
		dst = item(dst, opInsert, len(target)-lit)
		dst = append(dst, target[lit:]...)
	}
	return dst
}

// recordOverhead is how much larger a DELTA record's head is than a MEM
// record's (24 bytes against 8), charged to the delta methods in Best.
const recordOverhead = 16

// Best returns the cheapest way to store target given base (same length,
// typically one 4 KiB page): XOR, Ops or Raw (method 0, delta nil: store
// the page itself). It judges by a cheap estimate of the size after the
// segment codec: zero bytes are nearly free, other bytes cost one each.
// So raw costs the non-zero bytes of target, XOR the non-zero bytes of
// base^target, OPS the length of its program (computed only when XOR
// changes more than 64 bytes); both delta methods pay the larger record
// head. Ties go to raw, then XOR (the cheapest to apply).
func Best(base, target []byte) (method uint8, delta []byte) {
	if len(base) != len(target) || len(target) == 0 {
		return Raw, nil
	}
	x := make([]byte, len(target))
	xorInto(x, base, target)
	rawCost := nonZero(target)
	xorCost := nonZero(x) + recordOverhead
	best, bestCost, bestDelta := Raw, rawCost, []byte(nil)
	if xorCost < bestCost {
		best, bestCost, bestDelta = XOR, xorCost, x
	}
	if xorCost > 64+recordOverhead {
		ops := encodeOps(make([]byte, 0, 256), base, target)
		if c := len(ops) + recordOverhead; c < bestCost {
			best, bestDelta = Ops, ops
		}
	}
	return best, bestDelta
}

func nonZero(b []byte) int {
	n := 0
	i := 0
	for ; i+8 <= len(b); i += 8 {
		v := binary.LittleEndian.Uint64(b[i:])
		if v == 0 {
			continue
		}
		// count non-zero bytes of v
		v |= v >> 4
		v |= v >> 2
		v |= v >> 1
		n += bits.OnesCount64(v & 0x0101010101010101)
	}
	for ; i < len(b); i++ {
		if b[i] != 0 {
			n++
		}
	}
	return n
}
