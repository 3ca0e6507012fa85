package virt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"cloudlet/lib/qmpctl"
	"cloudlet/lib/vm"

	"libvirt.org/go/libvirtxml"
)

// NetDevID is the id libvirt gives the user-mode network of the domain's
// first (only) interface; port forwards are added to it.
const NetDevID = "hostnet0"

// LibvirtLogDir is where libvirtd keeps each domain's QEMU log.
const LibvirtLogDir = "/var/log/libvirt/qemu"

// DomainName is the domain of the instance in runDir: the run folder's
// name, unique on the host (the instance name plus a random suffix), in
// the characters and length libvirt and QEMU take for a name.
func DomainName(runDir string) string {
	b := []byte(filepath.Base(runDir))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[len(b)-64:] // the random suffix is at the end
	}
	if len(b) == 0 || b[0] == '-' || b[0] == '_' {
		b = append([]byte("vm"), b...)
		if len(b) > 64 {
			b = b[:64]
		}
	}
	return string(b)
}

// Start runs cfg as a transient libvirt domain at uri and returns its QEMU
// as an adopted vm.Instance, ready as vm.Start's is. With cfg.Incoming the
// domain waits for its incoming migration (the caller runs it and
// continues the VM through the instance's QMP socket); otherwise it runs.
// Killing the instance destroys the domain.
func Start(ctx context.Context, uri string, cfg vm.Config) (*vm.Instance, error) {
	c, accel, err := vm.Prepare(ctx, cfg)
	if err != nil {
		return nil, err
	}
	conn, err := Connect(ctx, uri)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	models, err := conn.SecModels()
	if err != nil {
		return nil, err
	}
	name := DomainName(c.RunDir)
	doc, err := DomainXML(c, DomainOptions{Name: name, Accel: accel, SecModels: models})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.RunDir, "domain.xml"), []byte(doc+"\n"), 0o600); err != nil {
		return nil, err
	}
	if _, err := conn.Create(doc, true); err != nil {
		return nil, fmt.Errorf("libvirt refused the domain (its XML is in %s): %w", filepath.Join(c.RunDir, "domain.xml"), err)
	}
	destroy := func() error { return DestroyDomain(context.Background(), conn.URI, name) }
	// QEMU's own log is libvirt's; the run folder points to it.
	os.Remove(c.LogFile())
	os.Symlink(filepath.Join(LibvirtLogDir, name+".log"), c.LogFile())
	ok := false
	defer func() {
		if !ok {
			destroy()
		}
	}()
	live, err := conn.Domain(name)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	in, err := vm.Adopt(actx, c, accel, consolePty(live), destroy)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.PidFile(), []byte(strconv.Itoa(in.Pid)+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := addForwards(ctx, in); err != nil {
		return nil, err
	}
	if !c.Incoming {
		if err := conn.Resume(name); err != nil {
			return nil, fmt.Errorf("virsh resume %s: %w", name, err)
		}
	}
	ok = true
	return in, nil
}

// consolePty is the pseudo-terminal libvirt gave the domain's serial
// console.
func consolePty(d *libvirtxml.Domain) string {
	if d.Devices != nil {
		for _, s := range d.Devices.Serials {
			if s.Source != nil && s.Source.Pty != nil {
				return s.Source.Pty.Path
			}
		}
	}
	return ""
}

// DestroyDomain ends the domain name at uri (virsh destroy) if it still
// runs.
func DestroyDomain(ctx context.Context, uri, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := Connect(ctx, uri)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Destroy(name)
}

// addForwards adds the config's port forwards to the running QEMU's
// user-mode network and fills in the host ports it chose.
func addForwards(ctx context.Context, in *vm.Instance) error {
	if len(in.Config.Forwards) == 0 {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := qmpctl.Dial(qctx, in.QMPPath())
	if err != nil {
		return err
	}
	netdev := NetDevID
	if in.Config.NetRestrict {
		netdev = vm.NetDevID // our own -netdev (DomainXML)
	}
	if err := hostfwdAdd(qctx, c, netdev, in.Config.Forwards); err != nil {
		c.Close()
		return err
	}
	c.Close() // QEMU's monitor serves one client at a time
	return in.FillFreePorts(qctx)
}

func hostfwdAdd(ctx context.Context, c *qmpctl.Client, netdev string, fwds []vm.Forward) error {
	for _, f := range fwds {
		rule := fmt.Sprintf("%s:%s:%d-:%d", f.Proto, f.HostAddr, f.HostPort, f.GuestPort)
		out, err := c.HumanMonitorCommand(ctx, "hostfwd_add "+netdev+" "+rule)
		if err == nil && out != "" {
			err = fmt.Errorf("%s", out)
		}
		if err != nil {
			return fmt.Errorf("forwarding %s: %w", rule, err)
		}
	}
	return nil
}
