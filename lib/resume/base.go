package resume

import (
	"bytes"
	"context"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/instance"
)

// FromBase resumes a base VM as it was captured, with no changes: what a
// user does to customize a base before capturing an overlay.
func FromBase(ctx context.Context, dir string, so StreamOptions) (*instance.Info, error) {
	b, err := base.Open(dir)
	if err != nil {
		return nil, err
	}
	var s bytes.Buffer
	err = b.WriteResumeStream(format.NewWriter(&s))
	b.Close()
	if err != nil {
		return nil, err
	}
	so.BaseDir = dir
	return FromStream(ctx, format.NewReader(&s), so)
}
