package format

import (
	"fmt"
	"regexp"

	"cloudlet/lib/spanset"
)

// Manifest is a MANIFEST record (SPEC.md section 2.10): what the rest of
// the stream will write, at its head, so that a consumer can start the VM
// before the rest has arrived (vm-resume --early-start) and know which
// ranges to wait for.
//
// An overlay's manifest lists its segments (sizes, sha256 of each SEGMENT
// payload, the ranges each one writes) and is written by overlay-pack. A
// diff stream's manifest lists the union of the ranges the records after
// it write; overlay-apply writes it from the overlay's.
type Manifest struct {
	// Order is how the records were ordered: OrderOffset (as captured,
	// the default) or OrderAccess (first touched first).
	Order string `msgpack:"order,omitempty" json:"order,omitempty"`
	// Segments (overlay): one per SEGMENT frame, in stream order.
	Segments []ManifestSegment `msgpack:"segments,omitempty" json:"segments,omitempty"`
	// Mem and Disk (diff stream): [offset, length] of every range the
	// records after the manifest write, sorted, disjoint.
	Mem  [][2]uint64 `msgpack:"mem,omitempty" json:"mem,omitempty"`
	Disk [][2]uint64 `msgpack:"disk,omitempty" json:"disk,omitempty"`
	// Signer (diff stream): the key ID (16 hex digits) of the signed
	// overlay head every segment was checked against before its records
	// were written; empty when the overlay's head was not signed or not
	// checked.
	Signer string `msgpack:"signer,omitempty" json:"signer,omitempty"`
}

// ManifestSegment describes one SEGMENT of an overlay.
type ManifestSegment struct {
	Size   uint64      `msgpack:"size" json:"size"`     // bytes of the SEGMENT payload
	Raw    uint64      `msgpack:"raw" json:"raw"`       // its RawLength
	SHA256 []byte      `msgpack:"sha256" json:"sha256"` // sha256 of the SEGMENT payload (32 bytes)
	Mem    [][2]uint64 `msgpack:"mem,omitempty" json:"mem,omitempty"`
	Disk   [][2]uint64 `msgpack:"disk,omitempty" json:"disk,omitempty"`
}

// Values of Manifest.Order.
const (
	OrderOffset = "offset"
	OrderAccess = "access"
)

// ManifestRecord decodes and checks a MANIFEST payload against the
// stream's header: ranges aligned, inside the VM, disjoint.
func (r *Record) ManifestRecord(h *Header) (*Manifest, error) {
	if r.Type != TypeManifest {
		return nil, malformed("%s is not a MANIFEST record", r.Type)
	}
	var m Manifest
	if err := Unmarshal(r.Payload, &m); err != nil {
		return nil, err
	}
	if err := m.Validate(h); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks m against h.
func (m *Manifest) Validate(h *Header) error {
	switch m.Order {
	case "", OrderOffset, OrderAccess:
	default:
		return malformed("MANIFEST order %q (want offset or access)", m.Order)
	}
	if !Packed(h.Kind) && len(m.Segments) > 0 {
		return malformed("MANIFEST of a %s stream lists %d segments", h.Kind, len(m.Segments))
	}
	if Packed(h.Kind) && len(m.Mem)+len(m.Disk) > 0 {
		return malformed("MANIFEST of a %s stream lists ranges outside its segments", h.Kind)
	}
	var mem, disk spanset.Set[uint64]
	n := len(m.Mem) + len(m.Disk)
	for _, s := range m.Segments {
		n += len(s.Mem) + len(s.Disk)
	}
	if n > MaxManifestRanges {
		return fmt.Errorf("%w: MANIFEST of %d ranges (at most %d)", ErrTooLarge, n, MaxManifestRanges)
	}
	check := func(rs [][2]uint64, set *spanset.Set[uint64], align, limit uint64, what string) error {
		for _, x := range rs {
			if err := span(x[0], x[1], align, limit, "MANIFEST "+what+" range"); err != nil {
				return err
			}
			if !set.Insert(x[0], x[0]+x[1]) {
				return fmt.Errorf("%w: MANIFEST %s range %d+%d listed twice", ErrOverlap, what, x[0], x[1])
			}
		}
		return nil
	}
	for i, s := range m.Segments {
		if len(s.SHA256) != 32 {
			return malformed("MANIFEST segment %d: sha256 of %d bytes", i, len(s.SHA256))
		}
		if s.Size == 0 || s.Size > MaxPayload || s.Raw == 0 || s.Raw > MaxSegmentRaw {
			return malformed("MANIFEST segment %d: size %d, raw %d", i, s.Size, s.Raw)
		}
		if err := check(s.Mem, &mem, PageSize, h.VM.MemSize, "memory"); err != nil {
			return err
		}
		if err := check(s.Disk, &disk, SectorSize, h.VM.DiskSize, "disk"); err != nil {
			return err
		}
	}
	if err := check(m.Mem, &mem, PageSize, h.VM.MemSize, "memory"); err != nil {
		return err
	}
	if err := check(m.Disk, &disk, SectorSize, h.VM.DiskSize, "disk"); err != nil {
		return err
	}
	if m.Signer != "" && !reKeyID.MatchString(m.Signer) {
		return malformed("MANIFEST signer %q (want 16 hex digits)", m.Signer)
	}
	return nil
}

// Ranges returns the memory and disk ranges m promises, over all its
// segments for an overlay's.
func (m *Manifest) Ranges() (mem, disk [][2]uint64) {
	mem, disk = append(mem, m.Mem...), append(disk, m.Disk...)
	for _, s := range m.Segments {
		mem, disk = append(mem, s.Mem...), append(disk, s.Disk...)
	}
	return mem, disk
}

// promise makes v accept writes only inside m's ranges (SPEC.md section
// 2.10); CheckPromised then tells whether every one was written.
func (v *Validator) promise(m *Manifest) {
	p := &[2]spanset.Set[uint64]{}
	mem, disk := m.Ranges()
	for _, x := range mem {
		p[0].Add(x[0], x[0]+x[1])
	}
	for _, x := range disk {
		p[1].Add(x[0], x[0]+x[1])
	}
	*v.promised = p
}

// CheckPromised reports an error unless every range the stream's MANIFEST
// promised was written (call it after END). Streams without a manifest
// pass.
func (v *Validator) CheckPromised() error {
	p := *v.promised
	if p == nil {
		return nil
	}
	var err error
	for i, set := range []*spanset.Set[uint64]{v.mem, v.disk} {
		p[i].All(func(lo, hi uint64) {
			if err == nil && !set.Covers(lo, hi) {
				what := [2]string{"memory", "disk"}[i]
				err = fmt.Errorf("%w: the MANIFEST promised %s %d+%d, which the stream never wrote", ErrMalformed, what, lo, hi-lo)
			}
		})
	}
	return err
}

// checkPromised refuses a write outside the manifest's ranges.
func (v *Validator) checkPromised(sp uint8, off, length uint64) error {
	p := *v.promised
	if p == nil {
		return nil
	}
	set, what := &p[0], "memory"
	if sp == SpaceDisk {
		set, what = &p[1], "disk"
	}
	if !set.Covers(off, off+length) {
		return fmt.Errorf("%w: %s %d+%d is not in the stream's MANIFEST", ErrMalformed, what, off, length)
	}
	return nil
}

var reKeyID = regexp.MustCompile(`^[0-9a-f]{16}$`)
