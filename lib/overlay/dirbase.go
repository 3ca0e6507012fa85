package overlay

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// DirBase is a base folder: disk.img (raw disk), mem.ram (raw guest RAM),
// devstate.bin and base.json, whose "id" field is the base ID. It is a
// stand-in until lib/base provides the real thing; it trusts base.json's
// ID rather than hashing the files.
type DirBase struct {
	dir       string
	id        string
	mem, disk *os.File
}

var reID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// OpenDir opens the base folder dir.
func OpenDir(dir string) (*DirBase, error) {
	b, err := os.ReadFile(filepath.Join(dir, "base.json"))
	if err != nil {
		return nil, fmt.Errorf("opening base: %w (give the folder that holds base.json, mem.ram and disk.img)", err)
	}
	var meta struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("opening base: %s: %v", filepath.Join(dir, "base.json"), err)
	}
	if !reID.MatchString(meta.ID) {
		return nil, fmt.Errorf("opening base: %s: id %q is not a hex sha256", filepath.Join(dir, "base.json"), meta.ID)
	}
	d := &DirBase{dir: dir, id: meta.ID}
	if d.mem, err = os.Open(filepath.Join(dir, "mem.ram")); err != nil {
		return nil, fmt.Errorf("opening base: %w", err)
	}
	if d.disk, err = os.Open(filepath.Join(dir, "disk.img")); err != nil {
		d.mem.Close()
		return nil, fmt.Errorf("opening base: %w", err)
	}
	return d, nil
}

// ID returns the base ID from base.json.
func (d *DirBase) ID() string { return d.id }

// String returns the folder, for messages.
func (d *DirBase) String() string { return d.dir }

// ReadMemAt reads guest RAM from mem.ram.
func (d *DirBase) ReadMemAt(p []byte, off int64) (int, error) { return d.mem.ReadAt(p, off) }

// ReadDiskAt reads the disk from disk.img.
func (d *DirBase) ReadDiskAt(p []byte, off int64) (int, error) { return d.disk.ReadAt(p, off) }

// Close closes the files.
func (d *DirBase) Close() error {
	err := d.mem.Close()
	if e := d.disk.Close(); err == nil {
		err = e
	}
	return err
}

// CatalogEntry is one base in a catalog file (a JSON list).
type CatalogEntry struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Path   string `json:"path"`
}

// FindInCatalog returns the folder of the base with the given ID listed in
// the catalog file. Relative paths are relative to the catalog's folder.
func FindInCatalog(catalog, id string) (string, error) {
	b, err := os.ReadFile(catalog)
	if err != nil {
		return "", fmt.Errorf("reading base catalog: %w", err)
	}
	var list []CatalogEntry
	if err := json.Unmarshal(b, &list); err != nil {
		return "", fmt.Errorf("reading base catalog %s: %v (want a JSON list of {\"name\", \"sha256\", \"path\"})", catalog, err)
	}
	for _, e := range list {
		if e.SHA256 == id {
			if !filepath.IsAbs(e.Path) {
				return filepath.Join(filepath.Dir(catalog), e.Path), nil
			}
			return e.Path, nil
		}
	}
	return "", fmt.Errorf("base %s is not in the catalog %s (%d bases); add it, or give the base folder with --base", id, catalog, len(list))
}
