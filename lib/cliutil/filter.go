package cliutil

import (
	"errors"
	"io"

	"cloudlet/format"
)

// Filter runs a stream stage: fn reads from r and writes to w. If fn fails
// after output started, Filter tells the next stage in-band with an ERROR
// record: an upstream failure is passed on under the original stage's name,
// any other failure under stage. Filter closes w (writing END) on success.
func Filter(stage string, stdin io.Reader, stdout io.Writer, fn func(r *format.Reader, w *format.Writer) error) error {
	r := format.NewReader(stdin)
	w := format.NewWriter(stdout)
	err := fn(r, w)
	if err == nil {
		return w.Close()
	}
	var up *format.UpstreamError
	if errors.As(err, &up) {
		w.WriteError(up.Stage, up.Message)
	} else {
		w.WriteError(stage, err.Error())
	}
	return err
}
