package resume

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"cloudlet/lib/vm"
)

// Port policies for the host ports of forwards recorded in a stream.
const (
	// PortsRecorded uses the recorded host ports, and a free one (said on
	// stderr) when a recorded one is taken.
	PortsRecorded = "recorded"
	// PortsFree gives every recorded forward a free host port: what a
	// cloudlet serving many users of one overlay wants.
	PortsFree = "free"
	// PortsStrict refuses to resume when a recorded host port is taken.
	PortsStrict = "strict"
)

// CheckPortPolicy reports whether p is a known policy ("" is recorded).
func CheckPortPolicy(p string) error {
	switch p {
	case "", PortsRecorded, PortsFree, PortsStrict:
		return nil
	}
	return fmt.Errorf("port policy %q: want recorded, free or strict", p)
}

// placeForwards decides the host ports of fwds before QEMU binds them.
// Host port 0 always means a free port (QEMU binds port 0, the kernel
// picks). A forward the user gave (recorded false) whose port is taken is
// refused; recorded forwards follow policy.
func placeForwards(fwds []vm.Forward, recorded bool, policy string, log io.Writer) ([]vm.Forward, error) {
	out := append([]vm.Forward(nil), fwds...)
	for i := range out {
		f := &out[i]
		if f.HostAddr == "" {
			f.HostAddr = "127.0.0.1"
		}
		if f.Proto == "" {
			f.Proto = "tcp"
		}
		if f.HostPort == 0 {
			continue
		}
		if recorded && policy == PortsFree {
			f.HostPort = 0
			continue
		}
		err := portFree(f.Proto, f.HostAddr, f.HostPort)
		switch {
		case err == nil:
		case !recorded:
			return nil, fmt.Errorf("--forward %s:%s:%d:%d: host port %d is taken (%v); give %s:0:%d for a free one", f.Proto, f.HostAddr, f.HostPort, f.GuestPort, f.HostPort, err, f.Proto, f.GuestPort)
		case policy == PortsStrict:
			return nil, fmt.Errorf("host port %s:%d, recorded in the stream for guest port %d, is taken (%v): free it, or resume with --ports free (or --forward %s:0:%d)", f.HostAddr, f.HostPort, f.GuestPort, err, f.Proto, f.GuestPort)
		default:
			if log != nil {
				fmt.Fprintf(log, "vm-resume: host port %s:%d, recorded for guest port %d, is taken: forwarding a free port instead (the instance JSON has it; --ports strict refuses)\n", f.HostAddr, f.HostPort, f.GuestPort)
			}
			f.HostPort = 0
		}
	}
	return out, nil
}

// portFree reports whether addr:port can be bound for proto now.
func portFree(proto, addr string, port int) error {
	hp := net.JoinHostPort(addr, strconv.Itoa(port))
	switch proto {
	case "udp":
		c, err := net.ListenPacket("udp", hp)
		if err != nil {
			return err
		}
		return c.Close()
	case "tcp":
		l, err := net.Listen("tcp", hp)
		if err != nil {
			return err
		}
		return l.Close()
	}
	return errors.New("unknown protocol " + proto)
}
