package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"

	"cloudlet/format"
	"cloudlet/lib/cliutil"

	"github.com/urfave/cli/v2"
)

const description = `Reads a cloudlet stream or overlay on stdin (or from FILE) and prints, on
stdout, either a summary (default: header fields, base ID, records and bytes
per kind, the verified END) or one JSON object per record (--records). It
checks every frame as the other stages do, so it also says whether a stream
is intact. With --pass, it copies the stream unchanged to stdout and prints
the summary on stderr, so it can sit in the middle of a pipe:

   vm-capture --qmp run/qmp.sock | stream-inspect --pass | mem-diff --base B > d.stream`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var records, pass bool
	app := cliutil.NewApp("stream-inspect", "look inside a cloudlet stream or overlay",
		"stream-inspect [--records | --pass] [FILE] < stream", description,
		[]cli.Flag{
			&cli.BoolFlag{Name: "records", Usage: "print one JSON line per record", Destination: &records},
			&cli.BoolFlag{Name: "pass", Usage: "copy the stream to stdout, summary to stderr", Destination: &pass},
		},
		func(c *cli.Context) error {
			in := stdin
			if c.NArg() > 1 {
				return cliutil.Usagef("at most one FILE")
			}
			if f := c.Args().First(); f != "" && f != "-" {
				fh, err := openFile(f)
				if err != nil {
					return err
				}
				defer fh.Close()
				in = fh
			}
			out := stdout
			if pass {
				if err := cliutil.CheckStdout(stdout, false); err != nil {
					return err
				}
				in = io.TeeReader(in, stdout)
				out = stderr
			}
			return inspect(in, out, records)
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}

type kindStat struct {
	Records uint64 `json:"records"`
	Bytes   uint64 `json:"bytes"`
}

func inspect(in io.Reader, out io.Writer, perRecord bool) error {
	r := format.NewReader(in)
	r.HashSHA256()
	h, err := r.Header()
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	stats := map[string]*kindStat{}
	var firstErr error
	order := "" // the MANIFEST's, else the INDEX's
	for {
		off := r.Offset()
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			firstErr = err
			break
		}
		s := stats[rec.Type.String()]
		if s == nil {
			s = &kindStat{}
			stats[rec.Type.String()] = s
		}
		s.Records++
		s.Bytes += uint64(len(rec.Payload))
		switch rec.Type {
		case format.TypeManifest:
			if m, err := rec.ManifestRecord(h); err == nil {
				order = m.Order
			}
		case format.TypeIndex:
			var idx format.Index
			if format.Unmarshal(rec.Payload, &idx) == nil && order == "" {
				order = idx.Order
			}
		}
		if perRecord {
			if err := enc.Encode(describe(rec, off)); err != nil {
				return err
			}
		}
	}
	if perRecord {
		if firstErr != nil {
			return firstErr
		}
		return nil
	}
	names := make([]string, 0, len(stats))
	for n := range stats {
		names = append(names, n)
	}
	sort.Strings(names)
	summary := map[string]any{"header": h, "records": stats, "intact": firstErr == nil}
	if order != "" || format.Packed(h.Kind) {
		if order == "" {
			order = format.OrderOffset // (absent: offset, SPEC.md 2.6)
		}
		summary["order"] = order
	}
	if e := r.End(); e != nil {
		summary["end"] = e
	}
	if firstErr != nil {
		summary["error"] = firstErr.Error()
	}
	b, _ := json.MarshalIndent(summary, "", "  ")
	fmt.Fprintln(out, string(b))
	return firstErr
}

func describe(rec *format.Record, off int64) map[string]any {
	m := map[string]any{"type": rec.Type.String(), "offset": off, "len": len(rec.Payload), "critical": rec.Critical()}
	switch rec.Type {
	case format.TypeMem, format.TypeDisk:
		o, data, _ := rec.DataRecord()
		m["at"], m["bytes"] = o, len(data)
	case format.TypeMemZero, format.TypeDiskZero:
		o, n, _ := rec.ZeroRecord()
		m["at"], m["bytes"] = o, n
	case format.TypeCopy:
		c, _ := rec.CopyRecord()
		m["space"], m["source"], m["at"], m["from"], m["bytes"] = c.Space, c.Source, c.Offset, c.SourceOffset, c.Length
	case format.TypeDelta:
		d, _ := rec.DeltaRecord()
		m["space"], m["method"], m["at"], m["bytes"], m["delta_bytes"] = d.Space, d.Method, d.Offset, d.Length, len(d.Delta)
	case format.TypeSegment:
		s, _ := rec.SegmentRecord()
		m["codec"], m["raw"], m["compressed"] = s.Codec, s.RawLength, len(s.Compressed)
	case format.TypeIndex:
		var idx format.Index
		if format.Unmarshal(rec.Payload, &idx) == nil {
			m["segments"] = len(idx.Segments)
		}
	}
	return m
}
