package resume

import (
	"bytes"
	"context"
	"os"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/instance"
)

// FromBase resumes a base VM as it was captured, with no changes: what a
// user does to customize a base before capturing an overlay. It is a
// relative resume of a stream that holds only the base's device state.
func FromBase(ctx context.Context, dir string, so StreamOptions) (*instance.Info, error) {
	b, err := base.Open(dir)
	if err != nil {
		return nil, err
	}
	meta := b.Meta
	b.Close()
	dev, err := os.ReadFile(b.Path(base.DevStateFile))
	if err != nil {
		return nil, err
	}
	var s bytes.Buffer
	w := format.NewWriter(&s)
	if err := w.WriteHeader(&format.Header{Kind: format.KindDiff, VM: meta.VM, BaseID: meta.ID, MemRelative: true, Producer: []string{"vm-resume --from-base"}}); err != nil {
		return nil, err
	}
	if err := w.WriteDevState(dev); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	so.BaseDir = dir
	return FromStream(ctx, format.NewReader(&s), so)
}
