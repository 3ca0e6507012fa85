package vm

import "testing"

func TestResolvePorts(t *testing.T) {
	// Captured from QEMU 7.2 with hostfwd=tcp:127.0.0.1:0-:80,
	// hostfwd=tcp:127.0.0.1:0-:22 and a fixed tcp 8080->80.
	out := "Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n" +
		"  TCP[HOST_FORWARD]  10       127.0.0.1  8080       10.0.2.15    80     0     0\r\n" +
		"  TCP[HOST_FORWARD]   9       127.0.0.1 39745       10.0.2.15    80     0     0\r\n" +
		"  TCP[HOST_FORWARD]   8       127.0.0.1 43025       10.0.2.15    22     0     0\r\n"
	fwds := []Forward{
		{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 22},
		{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80},
		{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 0, GuestPort: 80},
	}
	if err := resolvePorts(fwds, parseUsernet(out)); err != nil {
		t.Fatal(err)
	}
	if fwds[0].HostPort != 43025 || fwds[1].HostPort != 8080 || fwds[2].HostPort != 39745 {
		t.Errorf("ports %+v", fwds)
	}
	missing := []Forward{{Proto: "udp", HostAddr: "127.0.0.1", GuestPort: 53}}
	if err := resolvePorts(missing, parseUsernet(out)); err == nil {
		t.Error("a forward QEMU does not report got a port")
	}
}
