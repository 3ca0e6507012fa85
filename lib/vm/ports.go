package vm

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"cloudlet/lib/qmpctl"
)

// A host forward line of HMP "info usernet":
//
//	TCP[HOST_FORWARD]   9       127.0.0.1 39745       10.0.2.15    80     0     0
var reHostFwd = regexp.MustCompile(`(?m)^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)`)

// usernetForward is one host forward QEMU's user-mode network reports.
type usernetForward struct {
	proto            string
	hostPort, guestP int
}

func parseUsernet(out string) []usernetForward {
	var fs []usernetForward
	for _, m := range reHostFwd.FindAllStringSubmatch(out, -1) {
		h, _ := strconv.Atoi(m[3])
		g, _ := strconv.Atoi(m[4])
		fs = append(fs, usernetForward{proto: strings.ToLower(m[1]), hostPort: h, guestP: g})
	}
	return fs
}

// resolvePorts fills in the host ports QEMU chose for forwards asked with
// host port 0 (QEMU binds port 0, so the kernel picks a free port with no
// race), from what QEMU's user-mode network reports.
func resolvePorts(fwds []Forward, reported []usernetForward) error {
	used := make([]bool, len(reported))
	take := func(match func(usernetForward) bool) int {
		for i, r := range reported {
			if !used[i] && match(r) {
				used[i] = true
				return r.hostPort
			}
		}
		return 0
	}
	for _, f := range fwds { // fixed ports first: they are not free ones
		if f.HostPort != 0 {
			take(func(r usernetForward) bool { return r.proto == f.Proto && r.hostPort == f.HostPort })
		}
	}
	for i := range fwds {
		f := &fwds[i]
		if f.HostPort != 0 {
			continue
		}
		if f.HostPort = take(func(r usernetForward) bool { return r.proto == f.Proto && r.guestP == f.GuestPort && r.hostPort != 0 }); f.HostPort == 0 {
			return fmt.Errorf("vm: QEMU reports no host port for the forward %s:%s:0 -> guest %d", f.Proto, f.HostAddr, f.GuestPort)
		}
	}
	return nil
}

// FillFreePorts asks a started QEMU which host ports it bound for the
// forwards given with host port 0 and records them in in.Config.
func (in *Instance) FillFreePorts(ctx context.Context) error {
	free := false
	for _, f := range in.Config.Forwards {
		free = free || f.HostPort == 0
	}
	if !free {
		return nil
	}
	c, err := qmpctl.Dial(ctx, in.QMPPath())
	if err != nil {
		return fmt.Errorf("vm: asking QEMU for its forwarded ports: %w", err)
	}
	out, err := c.HumanMonitorCommand(ctx, "info usernet")
	c.Close()
	if err != nil {
		return fmt.Errorf("vm: asking QEMU for its forwarded ports: %w", err)
	}
	fwds := append([]Forward(nil), in.Config.Forwards...)
	if err := resolvePorts(fwds, parseUsernet(out)); err != nil {
		return err
	}
	in.Config.Forwards = fwds
	return nil
}
