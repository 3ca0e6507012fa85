package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"cloudlet/lib/cliutil"
	"cloudlet/lib/vm"
)

func TestParseForward(t *testing.T) {
	for in, want := range map[string]vm.Forward{
		"tcp:8080:80":         {Proto: "tcp", HostPort: 8080, GuestPort: 80},
		"udp:5353:53":         {Proto: "udp", HostPort: 5353, GuestPort: 53},
		"tcp:0.0.0.0:2222:22": {Proto: "tcp", HostAddr: "0.0.0.0", HostPort: 2222, GuestPort: 22},
		"tcp:0:6379":          {Proto: "tcp", HostPort: 0, GuestPort: 6379},
		"tcp:127.0.0.1:0:80":  {Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 80},
	} {
		got, err := parseForward(in)
		if err != nil || got != want {
			t.Errorf("parseForward(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"tcp:8080", "sctp:1:2", "tcp:80:0", "tcp:-1:80", "tcp:8080:70000", "tcp:host,x:1:2", "tcp:8080::80"} {
		if _, err := parseForward(bad); err == nil {
			t.Errorf("parseForward(%q) accepted", bad)
		}
	}
}

// The early-start flags that make no sense together are usage errors
// (exit 2) that say what to add or drop, before anything is read.
func TestEarlyStartFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--access-log", "x"}, "add --early-start"},
		{[]string{"--warm", "true"}, "add --early-start"},
		{[]string{"--early-start", "--warm", "true"}, "--access-log FILE"},
		{[]string{"--early-start", "--mem-write", "direct"}, "--mem-write with --early-start"},
		{[]string{"--early-start", "--libvirt"}, "--early-start does not run under --libvirt"},
		{[]string{"--libvirt", "--early-start"}, "--early-start does not run under --libvirt"},
		{[]string{"--libvirt", "qemu:///system", "--early-start"}, "--early-start does not run under --libvirt"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), append([]string{"vm-resume"}, tc.args...), strings.NewReader(""), &out, &errb)
		if err == nil || cliutil.ExitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v (exit %d); want a usage error with %q", tc.args, err, cliutil.ExitCode(err), tc.want)
		}
		if out.Len() > 0 {
			t.Errorf("%v: wrote %q on stdout", tc.args, out.String())
		}
	}
}
