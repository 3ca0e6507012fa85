package format

import (
	"encoding/json"
	"fmt"
	"io"

	"cloudlet/lib/spanset"
)

// AccessLog is the order in which a resumed VM first read its memory and
// disk: `vm-resume --early-start --access-log FILE` writes it (as JSON)
// while it serves the images on demand, and `overlay-pack --order access
// --access-log FILE` puts the records that write those ranges first.
//
// Accesses are in first-read order; each range is page-aligned (4096
// bytes) and lies inside the VM's memory or disk. The kernel reads whole
// readahead windows, so a range holds the pages around the touched one
// too.
type AccessLog struct {
	Version  int      `json:"version"` // AccessLogVersion
	Accesses []Access `json:"accesses"`
}

// Access is one range first read at this point of the resume.
type Access struct {
	Space  string `json:"space"` // AccessMem or AccessDisk
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
}

// Access log constants.
const (
	AccessLogVersion = 1
	AccessMem        = "mem"
	AccessDisk       = "disk"
	// MaxAccessLog caps the size of an access log a reader accepts.
	MaxAccessLog = 64 << 20
)

// ReadAccessLog decodes and checks an access log (at most MaxAccessLog
// bytes). name is for messages.
func ReadAccessLog(r io.Reader, name string) (*AccessLog, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxAccessLog+1))
	if err != nil {
		return nil, fmt.Errorf("access log %s: %w", name, err)
	}
	if len(b) > MaxAccessLog {
		return nil, fmt.Errorf("access log %s: longer than %d bytes", name, MaxAccessLog)
	}
	var l AccessLog
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("access log %s: %w", name, err)
	}
	if l.Version != AccessLogVersion {
		return nil, fmt.Errorf("access log %s: version %d, this tool reads version %d", name, l.Version, AccessLogVersion)
	}
	for i, a := range l.Accesses {
		if (a.Space != AccessMem && a.Space != AccessDisk) || a.Length == 0 || a.Offset%PageSize != 0 || a.Length%PageSize != 0 || a.Offset+a.Length < a.Offset {
			return nil, fmt.Errorf("access log %s: access %d (%s %d+%d): want space mem or disk and a non-empty range of whole 4096-byte pages", name, i, a.Space, a.Offset, a.Length)
		}
	}
	return &l, nil
}

// WriteAccessLog writes l as JSON.
func WriteAccessLog(w io.Writer, l *AccessLog) error {
	l.Version = AccessLogVersion
	enc := json.NewEncoder(w)
	return enc.Encode(l)
}

// Merge appends the accesses of more that l does not cover yet, in more's
// order: several recorded resumes make one log, the first one's order
// first (vm-resume --access-log adds to an existing log).
func (l *AccessLog) Merge(more *AccessLog) {
	var seen [2]spanset.Set[uint64]
	idx := func(space string) int {
		if space == AccessDisk {
			return 1
		}
		return 0
	}
	for _, a := range l.Accesses {
		seen[idx(a.Space)].Add(a.Offset, a.Offset+a.Length)
	}
	for _, a := range more.Accesses {
		s := &seen[idx(a.Space)]
		// Page by page: only what is new keeps its place.
		for off := a.Offset; off < a.Offset+a.Length; off += PageSize {
			if s.Covers(off, off+PageSize) {
				continue
			}
			s.Add(off, off+PageSize)
			if k := len(l.Accesses) - 1; k >= 0 && l.Accesses[k].Space == a.Space && l.Accesses[k].Offset+l.Accesses[k].Length == off {
				l.Accesses[k].Length += PageSize
				continue
			}
			l.Accesses = append(l.Accesses, Access{Space: a.Space, Offset: off, Length: PageSize})
		}
	}
}
