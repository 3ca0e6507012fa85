package base

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Entry is one base in the catalog, in the original server's format.
type Entry struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Path   string `json:"path"`
}

// Catalog is a JSON list of bases that lets stages find a base by ID.
type Catalog struct {
	Path    string
	Entries []Entry
}

// DefaultCatalogPath is $CLOUDLET_CATALOG, else ~/.cloudlet/catalog.json.
func DefaultCatalogPath() string {
	if p := os.Getenv("CLOUDLET_CATALOG"); p != "" {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cloudlet", "catalog.json")
}

// LoadCatalog reads the catalog at path; a missing file is an empty catalog.
func LoadCatalog(path string) (*Catalog, error) {
	c := &Catalog{Path: path}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &c.Entries); err != nil {
		return nil, fmt.Errorf("catalog %s: %v (want a JSON list of {\"name\",\"sha256\",\"path\"})", path, err)
	}
	return c, nil
}

// Save writes the catalog atomically (temp file + rename).
func (c *Catalog) Save() error {
	if err := os.MkdirAll(filepath.Dir(c.Path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c.Entries, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.Path), ".catalog-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), c.Path)
}

// Add adds or replaces the entry with the same ID.
func (c *Catalog) Add(e Entry) {
	for i := range c.Entries {
		if c.Entries[i].SHA256 == e.SHA256 {
			c.Entries[i] = e
			return
		}
	}
	c.Entries = append(c.Entries, e)
}

// Remove removes the entries whose name or ID (or an ID prefix of at least
// 8 characters) is key, and reports how many it removed.
func (c *Catalog) Remove(key string) int {
	kept := c.Entries[:0]
	n := 0
	for _, e := range c.Entries {
		if matches(e, key) {
			n++
			continue
		}
		kept = append(kept, e)
	}
	c.Entries = kept
	return n
}

func matches(e Entry, key string) bool {
	return e.Name == key || e.SHA256 == key || (len(key) >= 8 && strings.HasPrefix(e.SHA256, key))
}

// Lookup returns the entry named key: a base name, ID, or ID prefix of at
// least 8 digits (as Remove matches).
func (c *Catalog) Lookup(key string) (Entry, bool) {
	for _, e := range c.Entries {
		if matches(e, key) {
			return e, true
		}
	}
	return Entry{}, false
}

// Find returns the entry for a base ID.
func (c *Catalog) Find(id string) (Entry, bool) {
	for _, e := range c.Entries {
		if e.SHA256 == id {
			return e, true
		}
	}
	return Entry{}, false
}

// Locate opens the base a stream needs: dir if given, else the catalog
// entry for id. A base whose ID differs from id is refused with both IDs and
// where it looked.
func Locate(dir, catalogPath, id string) (*Base, error) {
	where := dir
	if dir == "" {
		if catalogPath == "" {
			catalogPath = DefaultCatalogPath()
		}
		c, err := LoadCatalog(catalogPath)
		if err != nil {
			return nil, err
		}
		e, ok := c.Find(id)
		if !ok {
			return nil, fmt.Errorf("base %s is not in catalog %s (%d entries); give --base DIR or add it with cloudlet-base add", id, catalogPath, len(c.Entries))
		}
		dir, where = e.Path, fmt.Sprintf("%s (catalog %s)", e.Path, catalogPath)
	}
	b, err := Open(dir)
	if err != nil {
		return nil, err
	}
	if id != "" && b.ID() != id {
		b.Close()
		return nil, fmt.Errorf("wrong base: the stream needs base %s, but %s is base %s", id, where, b.ID())
	}
	return b, nil
}
