package jail

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"cloudlet/lib/vm"
)

// Policy is what a guest's network may reach.
type Policy string

// The policies (package comment).
const (
	Isolated Policy = "isolated"
	Outbound Policy = "outbound"
	Host     Policy = "host"
)

// Policies lists the policies, for help texts.
const Policies = "isolated, outbound or host"

// ParsePolicy reads a policy name; "" is Isolated.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case "":
		return Isolated, nil
	case Isolated, Outbound, Host:
		return p, nil
	}
	return "", fmt.Errorf("network policy %q: want %s", s, Policies)
}

const (
	subnet     = "10.213.0.0/16" // outbound namespaces: one /30 each
	maxNS      = 1 << 14
	hostPrefix = "clh" // host-side veth names (nftables matches the prefix)
	nsPrefix   = "cloudlet-"
	lockFile   = "/run/cloudlet-net.lock"
	netnsDir   = "/run/netns"
)

// Forwards returns the forwards as users reach them: cfg's own for
// isolated and host, the proxy's host side for outbound (ports filled in).
func (j *Jail) Forwards(inner []vm.Forward) []vm.Forward {
	if j.Policy != Outbound {
		return inner
	}
	return j.outer
}

// outbound makes the namespace and moves cfg's forwards into it.
func (j *Jail) outbound(cfg *vm.Config) error {
	if os.Geteuid() != 0 {
		return errors.New("the outbound network policy needs root (it makes a network namespace); use --net isolated or host")
	}
	for _, f := range cfg.Forwards {
		if f.Proto == "udp" {
			return fmt.Errorf("forward udp:%d: the outbound network policy carries TCP forwards only; use --net isolated or host for UDP", f.GuestPort)
		}
	}
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	unlock, err := lockNet()
	if err != nil {
		return err
	}
	defer unlock()
	// A random free index: a name just freed is not taken again at once
	// (a namespace's veth goes away after its namespace, asynchronously).
	var errs []error
	first := rand.IntN(maxNS)
	for k := 0; k < maxNS && j.NS == "" && len(errs) < 4; k++ {
		idx := (first + k) % maxNS
		if _, err := os.Stat(filepath.Join(netnsDir, nsPrefix+strconv.Itoa(idx))); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := j.makeNS(idx); err != nil {
			j.removeNS()
			errs = append(errs, err)
		}
	}
	if j.NS == "" {
		return fmt.Errorf("making a network namespace for the outbound policy: %w", errors.Join(errs...))
	}
	if err := hostRules(); err != nil {
		return err
	}
	// QEMU's forwards listen inside, at the namespace's address and the
	// guest's port; the proxy listens outside, where the user asked.
	inner := make([]vm.Forward, len(cfg.Forwards))
	for i, f := range cfg.Forwards {
		addr := f.HostAddr
		if addr == "" {
			addr = "127.0.0.1"
		}
		l, err := net.Listen("tcp4", net.JoinHostPort(addr, strconv.Itoa(f.HostPort)))
		if err != nil {
			return fmt.Errorf("forward %s:%d -> guest %d: %w", addr, f.HostPort, f.GuestPort, err)
		}
		file, err := l.(*net.TCPListener).File()
		l.Close()
		if err != nil {
			return err
		}
		j.listeners = append(j.listeners, file)
		f.HostAddr, f.HostPort = addr, file2port(file)
		j.outer = append(j.outer, f)
		inner[i] = vm.Forward{Proto: "tcp", HostAddr: j.GuestIP, HostPort: innerPort(i), GuestPort: f.GuestPort}
	}
	cfg.Forwards, cfg.NetNS = inner, filepath.Join(netnsDir, j.NS)
	return nil
}

// makeNS makes namespace idx, its veth pair and addresses, and records it
// (with the namespace's identity, so that a late Teardown never removes
// another instance's namespace of the same name). The caller holds the
// lock.
func (j *Jail) makeNS(idx int) error {
	ns, hv, gv := nsPrefix+strconv.Itoa(idx), hostPrefix+strconv.Itoa(idx), "clg"+strconv.Itoa(idx)
	base := 10<<24 | 213<<16 | uint32(idx)*4
	ip := func(k uint32) string {
		v := base + k
		return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).String()
	}
	if err := run("ip", "netns", "add", ns); err != nil {
		return err
	}
	j.NS, j.HostIP, j.GuestIP, j.Ino = ns, ip(1), ip(2), nsIno(ns)
	if err := j.save(); err != nil { // Teardown finds the namespace from here on
		return err
	}
	for _, s := range [][]string{
		{"ip", "link", "add", hv, "type", "veth", "peer", "name", gv, "netns", ns},
		{"ip", "addr", "add", j.HostIP + "/30", "dev", hv},
		{"ip", "link", "set", hv, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", j.GuestIP + "/30", "dev", gv},
		{"ip", "-n", ns, "link", "set", gv, "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", j.HostIP},
	} {
		if err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

// nsIno identifies the namespace mounted at /run/netns/NAME (0: none).
func nsIno(name string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(filepath.Join(netnsDir, name), &st) != nil {
		return 0
	}
	return st.Ino
}

// removeNS deletes the namespace recorded in j if it is still the one
// makeNS made. The caller holds the lock.
func (j *Jail) removeNS() {
	if j.NS != "" && j.Ino != 0 && nsIno(j.NS) == j.Ino {
		// Deleting the namespace deletes both ends of its veth.
		exec.Command("ip", "netns", "del", j.NS).Run()
	}
	j.NS, j.Ino = "", 0
}

// lockNet serializes making and removing namespaces on this host.
func lockNet() (func(), error) {
	lock, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, err
	}
	return func() { lock.Close() }, nil
}

// innerPort is the port in the namespace where QEMU listens for forward
// i (one per forward: two forwards may carry to one guest port).
func innerPort(i int) int { return 40000 + i }

// file2port returns the port a listening socket file is bound to.
func file2port(f *os.File) int {
	sa, err := syscall.Getsockname(int(f.Fd()))
	if in, ok := sa.(*syscall.SockaddrInet4); ok && err == nil {
		return in.Port
	}
	return 0
}

// hostRules makes sure the host forwards and masquerades the namespaces'
// traffic to the outside and drops what they send to the host or to each
// other (one nftables table for all of them).
func hostRules() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling IPv4 forwarding for the outbound policy: %w", err)
	}
	if exec.Command("nft", "list", "table", "inet", "cloudlet").Run() == nil {
		return nil
	}
	rules := `table inet cloudlet {
	chain input {
		type filter hook input priority 0; policy accept;
		iifname "` + hostPrefix + `*" ct state established,related accept
		iifname "` + hostPrefix + `*" drop
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "` + hostPrefix + `*" oifname "` + hostPrefix + `*" drop
		oifname "` + hostPrefix + `*" ct state established,related accept
		oifname "` + hostPrefix + `*" drop
	}
	chain postrouting {
		type nat hook postrouting priority 100; policy accept;
		ip saddr ` + subnet + ` oifname != "` + hostPrefix + `*" masquerade
	}
}
`
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: the outbound policy's rules: %v: %s (install the nftables package)", err, bytes.TrimSpace(out))
	}
	return nil
}

func run(args ...string) error {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// network sets up policy p and changes cfg to match: restrict=on for
// isolated; for outbound a namespace, its veth and the host's rules, the
// forwards moved into the namespace and their host side bound now, so
// free ports are known before QEMU starts.
func (j *Jail) network(p Policy, cfg *vm.Config) error {
	j.Policy = p
	switch p {
	case Host:
	case Isolated, "":
		j.Policy, cfg.NetRestrict = Isolated, true
	case Outbound:
		return j.outbound(cfg)
	default:
		return fmt.Errorf("network policy %q: want %s", p, Policies)
	}
	return nil
}

// unnet undoes network: the forward sockets, the proxy, the namespace and
// its veth.
func (j *Jail) unnet() {
	for _, f := range j.listeners {
		f.Close()
	}
	j.listeners = nil
	if j.Proxy > 0 && isProxy(j.Proxy, j.dir) {
		syscall.Kill(j.Proxy, syscall.SIGTERM)
		for i := 0; i < 100 && isProxy(j.Proxy, j.dir); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if j.NS != "" {
		if unlock, err := lockNet(); err == nil {
			j.removeNS()
			unlock()
		}
	}
}

// isProxy reports whether pid is a live proxy of the instance in dir
// (not a recycled pid, not another instance's proxy).
func isProxy(pid int, dir string) bool {
	if !vm.Alive(pid) {
		return false
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return bytes.Contains(b, []byte(ProxyArg)) && bytes.Contains(b, []byte("\x00--run\x00"+dir+"\x00"))
}
