// Package instance describes a VM that vm-resume started: the JSON line it
// prints and the instance.json it keeps in the run folder, which vm-capture
// reads to know the VM's layout.
package instance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"cloudlet/format"
)

// FileName is the instance description inside a run folder.
const FileName = "instance.json"

// Forward is a port forward as users see it.
type Forward struct {
	Proto     string `json:"proto"`
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

// Summary is what vm-resume prints: one JSON line a user or script needs
// to reach the instance.
type Summary struct {
	Name      string    `json:"name"`
	Pid       int       `json:"pid"`
	RunDir    string    `json:"run_dir"`
	QMP       string    `json:"qmp"`
	Serial    string    `json:"serial"`
	SerialLog string    `json:"serial_log"`
	VNC       string    `json:"vnc,omitempty"`
	Forwards  []Forward `json:"forwards"`
	Accel     string    `json:"accel"`
	BaseID    string    `json:"base_id,omitempty"`
	Resumed   string    `json:"resumed_from,omitempty"` // "image", "full" or "base"
	// Server is the process that serves an early-started VM's memory
	// and disk (vm-resume --early-start); the VM dies with it.
	Server int `json:"server_pid,omitempty"`
	// Libvirt and Domain name the libvirt daemon and the transient domain
	// the VM runs as (vm-resume --libvirt).
	Libvirt string `json:"libvirt_uri,omitempty"`
	Domain  string `json:"libvirt_domain,omitempty"`
	// Net is the network policy the guest runs under: isolated, outbound
	// or host (lib/jail).
	Net string `json:"net,omitempty"`
	// Timings in seconds, for the curious and for benchmarks.
	Timings map[string]float64 `json:"timings,omitempty"`
}

// Info is the Summary plus the VM's layout, stored in instance.json for
// vm-capture.
type Info struct {
	Summary
	VM         format.VMDesc `json:"vm"`
	MemPath    string        `json:"mem_path"`
	MemShared  bool          `json:"mem_shared"` // share=on: capture reads RAM from MemPath
	DiskTop    string        `json:"disk_top,omitempty"`
	DiskImage  string        `json:"disk_image,omitempty"` // what DiskTop is layered on
	KernelPath string        `json:"kernel_path,omitempty"`
	InitrdPath string        `json:"initrd_path,omitempty"`
	Mount      string        `json:"mount,omitempty"` // the lazyfs mount of an early-started VM
}

// Write stores info as dir/instance.json.
func Write(dir string, info *Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+FileName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, FileName))
}

// Read loads dir/instance.json.
func Read(dir string) (*Info, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		return nil, fmt.Errorf("%w (is %s a run folder printed by vm-resume?)", err, dir)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("%s: %v", filepath.Join(dir, FileName), err)
	}
	return &info, nil
}

// Line returns the one-line JSON form vm-resume prints.
func (i *Info) Line() string {
	b, _ := json.Marshal(i.Summary)
	return string(b)
}
