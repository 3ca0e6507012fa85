package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"cloudlet/scripts/guest/clwork/workload"
)

func main() {
	args := os.Args[1:]
	cmd := ""
	if base := filepath.Base(os.Args[0]); strings.HasPrefix(base, "cl-") {
		cmd = strings.TrimPrefix(base, "cl-")
	} else if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "writefiles":
		err = writeFiles(args)
	case "fillmem":
		err = fillMem(args)
	case "counter":
		err = counter(args)
	case "checksum":
		err = checksum(args)
	case "serve":
		err = serve(args)
	default:
		fmt.Fprintln(os.Stderr, "usage: clwork writefiles|fillmem|counter|checksum|serve [flags]")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clwork "+cmd+":", err)
		os.Exit(1)
	}
}

func writeFiles(args []string) error {
	fs := flag.NewFlagSet("writefiles", flag.ExitOnError)
	mib := fs.Int("mib", 1, "MiB to write")
	dir := fs.String("dir", "/root/data", "target folder")
	seed := fs.Uint64("seed", 1, "content seed")
	content := fs.String("content", "mixed", "mixed (text and random files) or app (program-like, ~3x compressible)")
	_ = fs.Parse(args)
	mix, err := workload.ParseMix(*content)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	for _, f := range mix.Files(*mib, *seed) {
		p := filepath.Join(*dir, f.Name)
		sum, err := writeOne(p, func(w io.Writer) error {
			return workload.Generate(w, f.Kind, f.Size, *seed, f.Index)
		})
		if err != nil {
			return err
		}
		fmt.Printf("%s  %s\n", sum, p)
	}
	d, err := os.Open(*dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeOne writes a file through gen, fsyncs it and returns its sha256.
func writeOne(path string, gen func(io.Writer) error) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if err := gen(io.MultiWriter(f, h)); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

func fillMem(args []string) error {
	fs := flag.NewFlagSet("fillmem", flag.ExitOnError)
	mib := fs.Int("mib", 1, "MiB to write")
	dir := fs.String("dir", "/run/mem", "tmpfs folder")
	seed := fs.Uint64("seed", 1, "content seed")
	content := fs.String("content", "mixed", "mixed (text and random stripes) or app (program-like, ~3x compressible)")
	_ = fs.Parse(args)
	mix, err := workload.ParseMix(*content)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	p := filepath.Join(*dir, workload.FillName(*seed))
	sum, err := writeOne(p, func(w io.Writer) error {
		return mix.GenerateFill(w, *mib, *seed)
	})
	if err != nil {
		return err
	}
	fmt.Printf("%s  %s\n", sum, p)
	return nil
}

func counter(args []string) error {
	fs := flag.NewFlagSet("counter", flag.ExitOnError)
	file := fs.String("file", "/run/counter", "file to write the number to")
	interval := fs.Duration("interval", 100*time.Millisecond, "time per increment")
	start := fs.Int64("start", 0, "first value")
	count := fs.Int64("count", 0, "stop after this many increments (0: never)")
	_ = fs.Parse(args)
	tmp := *file + ".tmp"
	t := time.NewTicker(*interval)
	defer t.Stop()
	n := *start
	for i := int64(0); ; i++ {
		if err := os.WriteFile(tmp, []byte(strconv.FormatInt(n, 10)+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, *file); err != nil {
			return err
		}
		if *count > 0 && i >= *count {
			return nil
		}
		<-t.C
		n++
	}
}

func checksum(args []string) error {
	bad := false
	for _, p := range args {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			bad = true
			continue
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			bad = true
			continue
		}
		fmt.Printf("%x  %s\n", h.Sum(nil), p)
	}
	if bad {
		return fmt.Errorf("some files could not be read")
	}
	return nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	port := fs.Int("port", 80, "TCP port")
	dir := fs.String("dir", "/www", "document root")
	_ = fs.Parse(args)
	argv := []string{"httpd", "-p", strconv.Itoa(*port), "-h", *dir}
	return syscall.Exec("/bin/busybox", argv, os.Environ())
}
