package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/overlay"
)

// openBase opens the base named by key: a folder, or a catalog name or ID.
func openBase(catalogPath, key string) (*base.Base, error) {
	if st, err := os.Stat(key); err == nil && st.IsDir() {
		return base.Open(key)
	}
	c, err := base.LoadCatalog(catalogPath)
	if err != nil {
		return nil, err
	}
	e, ok := c.Lookup(key)
	if !ok {
		return nil, fmt.Errorf("base %q: not a folder, and no base of that name or ID in %s", key, c.Path)
	}
	return base.Open(e.Path)
}

// exportBase writes b as a base export (format/SPEC.md section 3): the
// whole base as a full stream, packed into compressed segments.
func exportBase(ctx context.Context, b *base.Base, w *format.Writer, o overlay.PackOptions) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(b.WriteExport(format.NewWriter(pw))) }()
	err := overlay.PackBase(ctx, format.NewReader(pr), w, o)
	pr.CloseWithError(fmt.Errorf("export stopped"))
	return err
}

// importBase reads a base export from r and makes the base folder dir from
// it (base.Create: built in a temporary folder, renamed into place only
// when complete and its ID is the export's). A base whose ID the catalog
// already holds is refused before anything is written.
func importBase(ctx context.Context, r io.Reader, dir string, c *base.Catalog, opt base.CreateOptions) (*base.Meta, error) {
	pr, pw := io.Pipe()
	unpacked := make(chan error, 1)
	go func() {
		w := format.NewWriter(pw)
		err := overlay.Unpack(ctx, format.NewReader(r), w, overlay.ApplyOptions{TempDir: filepath.Dir(dir)})
		if err == nil {
			err = w.Close()
		}
		pw.CloseWithError(err)
		unpacked <- err
	}()
	m, err := func() (*base.Meta, error) {
		defer pr.Close() // stops the unpacking when import gives up early
		fr := format.NewReader(pr)
		h, err := fr.Header()
		if err != nil {
			return nil, err
		}
		if c != nil {
			if e, ok := c.Find(h.BaseID); ok {
				return nil, fmt.Errorf("base %s is already in the catalog %s as %q at %s; nothing was changed", h.BaseID, c.Path, e.Name, e.Path)
			}
		}
		opt.ExpectID = h.BaseID
		return base.Create(dir, fr, opt)
	}()
	// What went wrong in the export itself says more than where the
	// unpacked stream stopped.
	if uerr := <-unpacked; err != nil && uerr != nil && !errors.Is(uerr, io.ErrClosedPipe) {
		return nil, uerr
	}
	return m, err
}
