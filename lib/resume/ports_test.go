package resume

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"cloudlet/lib/guesttest"
	"cloudlet/lib/vm"
)

// Host ports: 0 stays free; a taken recorded port becomes a free one (said
// on the log) or is refused under strict; a taken port the user named is
// refused; free moves every recorded port.
func TestPlaceForwards(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().(*net.TCPAddr).Port
	open := guesttest.FreePort(t)
	fwds := []vm.Forward{{HostPort: taken, GuestPort: 80}, {HostPort: open, GuestPort: 22}, {HostPort: 0, GuestPort: 6379}}

	var log bytes.Buffer
	got, err := placeForwards(fwds, true, PortsRecorded, &log)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].HostPort != 0 || got[1].HostPort != open || got[2].HostPort != 0 || got[0].HostAddr != "127.0.0.1" || got[0].Proto != "tcp" {
		t.Errorf("recorded: %+v", got)
	}
	if !strings.Contains(log.String(), "is taken: forwarding a free port instead") {
		t.Errorf("log: %q", log.String())
	}
	if fwds[0].HostPort != taken {
		t.Error("placeForwards changed its input")
	}
	if _, err := placeForwards(fwds, true, PortsStrict, nil); err == nil || !strings.Contains(err.Error(), "is taken") {
		t.Errorf("strict: %v", err)
	}
	if _, err := placeForwards(fwds, false, PortsRecorded, nil); err == nil || !strings.Contains(err.Error(), "give tcp:0:80 for a free one") {
		t.Errorf("user's taken port: %v", err)
	}
	got, err = placeForwards(fwds, true, PortsFree, nil)
	if err != nil || got[0].HostPort != 0 || got[1].HostPort != 0 {
		t.Errorf("free: %+v, %v", got, err)
	}
}
