package format

import (
	"fmt"

	"cloudlet/lib/spanset"
)

// Validator checks records against a stream's HEADER: alignment, bounds,
// known spaces and methods, no range written twice, and COPY records that
// refer to this stream only after the data was written (SPEC.md sections 2
// and 5). A Reader uses one; overlay readers share one between the top
// level and the records inside segments.
type Validator struct {
	h          *Header
	mem, disk  *spanset.Set[uint64]
	files      map[string]uint64 // FILE name -> bytes so far
	inSegments bool
	promised   **[2]spanset.Set[uint64] // the MANIFEST's memory and disk ranges (shared by views; nil: none)
	started    *bool                    // a record other than SIGNER or MANIFEST was seen
	devState   *uint64                  // DEVSTATE bytes so far (shared by views)
}

// NewValidator returns a Validator for a stream with header h.
func NewValidator(h *Header) *Validator {
	return &Validator{h: h, mem: &spanset.Set[uint64]{}, disk: &spanset.Set[uint64]{}, files: map[string]uint64{}, promised: new(*[2]spanset.Set[uint64]), started: new(bool), devState: new(uint64)}
}

// InSegment returns a Validator view for records inside an overlay's
// SEGMENT: the same coverage, but the rules of a diff stream body.
func (v *Validator) InSegment() *Validator {
	return &Validator{h: v.h, mem: v.mem, disk: v.disk, files: v.files, inSegments: true, promised: v.promised, started: v.started, devState: v.devState}
}

func (v *Validator) body() bool { return !Packed(v.h.Kind) || v.inSegments }

// whole reports whether the stream carries a whole VM (no base to copy
// from or diff against).
func (v *Validator) whole() bool { return v.h.Kind == KindFull || v.h.Kind == KindBase }

func span(off, length, align, limit uint64, what string) error {
	if length == 0 {
		return fmt.Errorf("%w: %s of length 0", ErrMalformed, what)
	}
	if off%align != 0 || length%align != 0 {
		return fmt.Errorf("%w: %s at %d+%d (want multiples of %d)", ErrMisaligned, what, off, length, align)
	}
	if off > limit || length > limit-off {
		return fmt.Errorf("%w: %s at %d+%d beyond size %d", ErrOutOfRange, what, off, length, limit)
	}
	return nil
}

func (v *Validator) space(sp uint8) (*spanset.Set[uint64], uint64, uint64, string, error) {
	switch sp {
	case SpaceMem:
		return v.mem, PageSize, v.h.VM.MemSize, "memory", nil
	case SpaceDisk:
		return v.disk, SectorSize, v.h.VM.DiskSize, "disk", nil
	}
	return nil, 0, 0, "", fmt.Errorf("%w: space %d", ErrMalformed, sp)
}

func (v *Validator) claim(sp uint8, off, length uint64) error {
	set, align, limit, name, err := v.space(sp)
	if err != nil {
		return err
	}
	if err := span(off, length, align, limit, name+" range"); err != nil {
		return err
	}
	if err := v.checkPromised(sp, off, length); err != nil {
		return err
	}
	if v.h.Live {
		set.Add(off, off+length) // written again in a later pass: the latest wins
		return nil
	}
	if !set.Insert(off, off+length) {
		return fmt.Errorf("%w: %s %d+%d", ErrOverlap, name, off, length)
	}
	return nil
}

// Check validates one record. It returns nil for unknown types (whether to
// skip or refuse them is the consumer's choice, see CheckKnown).
func (v *Validator) Check(r *Record) error {
	switch r.Type {
	case TypeManifest:
		return v.manifest(r)
	case TypeHeadSignature:
		if !Packed(v.h.Kind) || v.inSegments || *v.promised == nil || *v.started {
			return fmt.Errorf("%w: HEAD_SIGNATURE anywhere but right after an overlay's MANIFEST", ErrMalformed)
		}
		return nil
	case TypeSigner:
	default:
		if r.Type.Known() {
			*v.started = true
		}
	}
	switch r.Type {
	case TypeHeader:
		return fmt.Errorf("%w: second HEADER", ErrMalformed)
	case TypeEnd:
		return nil
	case TypeDevState, TypeMem, TypeMemZero, TypeDisk, TypeDiskZero, TypeCopy, TypeDelta:
		if !v.body() {
			return fmt.Errorf("%w: %s outside a segment of an overlay", ErrMalformed, r.Type)
		}
	case TypeFile:
		if !v.body() || !v.whole() {
			return fmt.Errorf("%w: FILE in a %s stream (only full streams and base exports carry files)", ErrMalformed, v.h.Kind)
		}
	case TypeSegment, TypeIndex:
		if !Packed(v.h.Kind) || v.inSegments {
			return fmt.Errorf("%w: %s in a %s stream", ErrMalformed, r.Type, v.h.Kind)
		}
	}
	switch r.Type {
	case TypeDevState:
		if *v.devState += uint64(len(r.Payload)); *v.devState > MaxDevState {
			return fmt.Errorf("%w: device state of more than %d bytes (DEVSTATE records so far: %d bytes; a VM's is a few hundred KB)", ErrTooLarge, MaxDevState, *v.devState)
		}
	case TypeMem, TypeDisk:
		off, data, err := r.DataRecord()
		if err != nil {
			return err
		}
		sp := SpaceMem
		if r.Type == TypeDisk {
			sp = SpaceDisk
		}
		return v.claim(sp, off, uint64(len(data)))
	case TypeMemZero, TypeDiskZero:
		off, n, err := r.ZeroRecord()
		if err != nil {
			return err
		}
		sp := SpaceMem
		if r.Type == TypeDiskZero {
			sp = SpaceDisk
		}
		return v.claim(sp, off, n)
	case TypeCopy:
		c, err := r.CopyRecord()
		if err != nil {
			return err
		}
		if v.whole() && c.Source <= SourceBaseDisk {
			return fmt.Errorf("%w: COPY from the base in a %s stream", ErrMalformed, v.h.Kind)
		}
		var src *spanset.Set[uint64]
		var align, limit uint64
		switch c.Source {
		case SourceBaseMem, SourceStreamMem:
			src, align, limit = v.mem, 1, v.h.VM.MemSize
		case SourceBaseDisk, SourceStreamDisk:
			src, align, limit = v.disk, 1, v.h.VM.DiskSize
		default:
			return fmt.Errorf("%w: COPY source %d", ErrMalformed, c.Source)
		}
		if err := span(c.SourceOffset, c.Length, align, limit, "COPY source"); err != nil {
			return err
		}
		if (c.Source == SourceStreamMem || c.Source == SourceStreamDisk) && !src.Covers(c.SourceOffset, c.SourceOffset+c.Length) {
			return fmt.Errorf("%w: source %d+%d", ErrDanglingCopy, c.SourceOffset, c.Length)
		}
		return v.claim(c.Space, c.Offset, c.Length)
	case TypeDelta:
		d, err := r.DeltaRecord()
		if err != nil {
			return err
		}
		if v.whole() {
			return fmt.Errorf("%w: DELTA in a %s stream", ErrMalformed, v.h.Kind)
		}
		switch d.Method {
		case DeltaXOR:
			if uint64(len(d.Delta)) != d.Length {
				return fmt.Errorf("%w: XOR delta of %d bytes for %d", ErrMalformed, len(d.Delta), d.Length)
			}
		case DeltaOps:
		default:
			return fmt.Errorf("%w: delta method %d", ErrMalformed, d.Method)
		}
		return v.claim(d.Space, d.Offset, d.Length)
	case TypeSegment:
		_, err := r.SegmentRecord()
		return err
	case TypeFile:
		f, err := r.FileRecord()
		if err != nil {
			return err
		}
		have, seen := v.files[f.Name]
		if !seen && len(v.files) >= MaxFileNames {
			return fmt.Errorf("%w: more than %d FILE names", ErrMalformed, MaxFileNames)
		}
		if f.Offset != have {
			return fmt.Errorf("%w: FILE %q at %d, want %d (file chunks come in order)", ErrMalformed, f.Name, f.Offset, have)
		}
		if uint64(len(f.Data)) > MaxFileSize-have {
			return fmt.Errorf("%w: FILE %q longer than %d bytes", ErrOutOfRange, f.Name, MaxFileSize)
		}
		v.files[f.Name] = have + uint64(len(f.Data))
	}
	return nil
}

// manifest checks a MANIFEST's place (before every other record but
// SIGNER, once) and content, and makes the later writes keep to it.
func (v *Validator) manifest(r *Record) error {
	if v.inSegments || *v.started {
		return fmt.Errorf("%w: MANIFEST after the stream's records (it comes right after the HEADER, or the SIGNER)", ErrMalformed)
	}
	if *v.promised != nil {
		return fmt.Errorf("%w: second MANIFEST", ErrMalformed)
	}
	if v.h.Live {
		return fmt.Errorf("%w: MANIFEST in a live stream (what a running VM will write is not known ahead)", ErrMalformed)
	}
	m, err := r.ManifestRecord(v.h)
	if err != nil {
		return err
	}
	v.promise(m)
	return nil
}

// CheckKnown is for consumers that interpret a whole stream: it returns
// ErrUnknownCrit for an unknown record with the CRITICAL flag, and reports
// skip=true for an unknown optional one.
func CheckKnown(r *Record) (skip bool, err error) {
	if r.Type.Known() {
		return false, nil
	}
	if r.Critical() {
		return false, fmt.Errorf("%w: %s; a newer tool wrote this stream, upgrade this one", ErrUnknownCrit, r.Type)
	}
	return true, nil
}
