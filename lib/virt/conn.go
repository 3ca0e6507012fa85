package virt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// DefaultURI is the libvirt connection vm-resume --libvirt uses when none
// is given: the local system instance, where QEMU domains run as services.
const DefaultURI = "qemu:///system"

// Conn is a connection to one libvirt daemon.
type Conn struct {
	URI string
	l   *libvirt.Libvirt
}

// Connect opens a connection to uri ("" means DefaultURI): any URI
// go-libvirt dials (local unix socket, qemu+ssh://, qemu+tcp://,
// qemu+tls://).
func Connect(ctx context.Context, uri string) (*Conn, error) {
	if uri == "" {
		uri = DefaultURI
	}
	u, err := url.Parse(uri)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("libvirt URI %q: want for example %s or qemu+ssh://host/system", uri, DefaultURI)
	}
	type res struct {
		l   *libvirt.Libvirt
		err error
	}
	ch := make(chan res, 1)
	go func() { l, err := libvirt.ConnectToURI(u); ch <- res{l, err} }()
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("connecting to libvirt at %s: %w (is libvirtd running? see README \"Running under libvirt\")", uri, r.err)
		}
		return &Conn{URI: uri, l: r.l}, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.l != nil {
				r.l.Disconnect()
			}
		}()
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("connecting to libvirt at %s: no answer in 30s", uri)
	}
}

// Close ends the connection.
func (c *Conn) Close() error { return c.l.Disconnect() }

// SecModels returns the security drivers of the host (dac, apparmor,
// selinux, none).
func (c *Conn) SecModels() ([]string, error) {
	b, err := c.l.Capabilities()
	if err != nil {
		return nil, err
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(string(b)); err != nil {
		return nil, fmt.Errorf("libvirt capabilities: %w", err)
	}
	var out []string
	for _, m := range caps.Host.SecModel {
		out = append(out, m.Name)
	}
	return out, nil
}

// Create starts a transient domain from its XML, paused if asked.
func (c *Conn) Create(doc string, paused bool) (libvirt.Domain, error) {
	var fl libvirt.DomainCreateFlags
	if paused {
		fl = libvirt.DomainStartPaused
	}
	return c.l.DomainCreateXML(doc, fl)
}

// Destroy ends the domain at once (virsh destroy); a domain that is gone
// already is no error.
func (c *Conn) Destroy(name string) error {
	d, err := c.l.DomainLookupByName(name)
	if err != nil {
		if libvirt.IsNotFound(err) {
			return nil
		}
		return err
	}
	if err := c.l.DomainDestroy(d); err != nil && !libvirt.IsNotFound(err) && !notRunning(err) {
		return fmt.Errorf("virsh destroy %s: %w", name, err)
	}
	return nil
}

// notRunning: libvirt refused because the domain is not running (a
// persistent domain that ended).
func notRunning(err error) bool {
	var e libvirt.Error
	return errors.As(err, &e) && e.Code == uint32(libvirt.ErrOperationInvalid)
}

// Resume lets a paused domain run (virsh resume).
func (c *Conn) Resume(name string) error {
	d, err := c.l.DomainLookupByName(name)
	if err != nil {
		return err
	}
	return c.l.DomainResume(d)
}

// Domain returns the live definition of a domain.
func (c *Conn) Domain(name string) (*libvirtxml.Domain, error) {
	d, err := c.l.DomainLookupByName(name)
	if err != nil {
		if libvirt.IsNotFound(err) {
			return nil, fmt.Errorf("libvirt at %s has no domain %q (see virsh -c %s list --all)", c.URI, name, c.URI)
		}
		return nil, err
	}
	doc, err := c.l.DomainGetXMLDesc(d, 0)
	if err != nil {
		return nil, err
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(doc); err != nil {
		return nil, fmt.Errorf("domain %s: %w", name, err)
	}
	return &dom, nil
}

// ErrNotOurs says a domain was not started by vm-resume.
var ErrNotOurs = errors.New("not a cloudlet instance")

// InstanceOf returns the cloudlet metadata of a domain (its run folder), or
// ErrNotOurs.
func InstanceOf(dom *libvirtxml.Domain) (*Metadata, error) {
	if dom.Metadata == nil || !strings.Contains(dom.Metadata.XML, MetadataNS) {
		return nil, ErrNotOurs
	}
	// The metadata holds other applications' elements too: find ours.
	dec := xml.NewDecoder(strings.NewReader(dom.Metadata.XML))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil, ErrNotOurs
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Space == MetadataNS && se.Name.Local == "instance" {
			var m Metadata
			if err := dec.DecodeElement(&m, &se); err != nil {
				return nil, fmt.Errorf("domain %s: cloudlet metadata: %w", dom.Name, err)
			}
			return &m, nil
		}
	}
}

// Target is what capturing a domain needs: the run folder of an instance
// vm-resume started, or, for any other domain, its disk (the file of its
// first disk, normally a qcow2 top layer over the image it was made from).
type Target struct {
	RunDir string
	Disk   string
}

// Target finds how to capture the domain name.
func (c *Conn) Target(name string) (*Target, error) {
	dom, err := c.Domain(name)
	if err != nil {
		return nil, err
	}
	if m, err := InstanceOf(dom); err == nil {
		return &Target{RunDir: m.RunDir}, nil
	} else if !errors.Is(err, ErrNotOurs) {
		return nil, err
	}
	t := &Target{}
	if dom.Devices != nil {
		for _, d := range dom.Devices.Disks {
			if d.Device != "" && d.Device != "disk" {
				continue
			}
			if d.Source == nil || d.Source.File == nil {
				return nil, fmt.Errorf("domain %s: its disk %s is not a file; vm-capture captures file disks (a qcow2 top layer)", name, diskName(d))
			}
			t.Disk = d.Source.File.File
			break
		}
	}
	return t, nil
}

func diskName(d libvirtxml.DomainDisk) string {
	if d.Target != nil {
		return d.Target.Dev
	}
	return "?"
}
