package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"cloudlet/lib/instance"

	"github.com/urfave/cli/v2"
)

// remote is a destination cloudlet reached over ssh (--remote).
type remote struct {
	host, sshOpts, bin, catalog, net, libvirt string
	forwards                                  cli.StringSlice
}

// command returns the shell command that runs ssh to the destination,
// where overlay-apply | vm-resume take the stream: the source's network
// policy and guest ports unless given (free host ports: the destination
// serves other users), the instance line on stdout.
func (r *remote) command(in *instance.Info) (string, error) {
	bin := r.bin
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		bin = filepath.Dir(exe)
	}
	resume := []string{"vm-resume", "--ports", "free"}
	net := r.net
	if net == "" {
		net = in.Net
	}
	if net != "" {
		resume = append(resume, "--net", net)
	}
	fwds := r.forwards.Value()
	if len(fwds) == 0 {
		for _, f := range in.Forwards {
			fwds = append(fwds, fmt.Sprintf("%s:0:%d", f.Proto, f.GuestPort))
		}
	}
	for _, f := range fwds {
		resume = append(resume, "--forward", f)
	}
	if r.libvirt != "" {
		resume = append(resume, "--libvirt", r.libvirt)
	}
	rcmd := "set -o pipefail; PATH=" + quote(bin) + ":$PATH; "
	if r.catalog != "" {
		rcmd += "export CLOUDLET_CATALOG=" + quote(r.catalog) + "; "
	}
	rcmd += "overlay-apply | " + quoteAll(resume)
	return "ssh " + r.sshOpts + " " + quote(r.host) + " " + quote("bash -c "+quote(rcmd)), nil
}

// quote makes s one word for sh.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func quoteAll(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = quote(w)
	}
	return strings.Join(q, " ")
}
