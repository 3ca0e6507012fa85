package jail

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"

	"cloudlet/lib/vm"
)

// StateFile holds an instance's confinement in its run folder, so that
// whoever ends the instance (vm-resume stop, the sweep of stale folders,
// the forward proxy) can undo it.
const StateFile = "jail.json"

// Options say how to confine one instance.
type Options struct {
	Net    Policy // what the guest's network may reach ("": Isolated)
	Limits Limits // its resource limits (zero values: none; DefaultLimits)
}

// Jail is one instance's confinement as set up (StateFile).
type Jail struct {
	Policy  Policy `json:"policy"`
	NS      string `json:"netns,omitempty"`     // namespace name (outbound)
	HostIP  string `json:"host_ip,omitempty"`   // the host side of the veth
	GuestIP string `json:"guest_ip,omitempty"`  // the namespace side, where QEMU's forwards listen
	Ino     uint64 `json:"netns_ino,omitempty"` // the namespace's identity (its nsfs inode)
	Proxy   int    `json:"proxy_pid,omitempty"`
	// Cgroups are the instance's cgroup folders (one per controller on
	// cgroup v1, one on v2).
	Cgroups []string `json:"cgroups,omitempty"`
	// FileCap caps each file QEMU writes (its run folder's), from Started.
	FileCap uint64 `json:"file_cap,omitempty"`

	dir       string
	listeners []*os.File // outbound: the host-side forward sockets, for the proxy
	outer     []vm.Forward
}

// Prepare confines the instance whose run folder is dir before its QEMU
// starts, and changes cfg (a vm.Config about to start) to match. The
// order: the cgroup with the limits, which this process joins (QEMU, an
// early-start server and the forward proxy are its children and inherit
// it), and the file size cap; then the network. Call Started once QEMU
// runs, or Teardown if it does not.
func Prepare(dir string, o Options, cfg *vm.Config) (*Jail, error) {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	j := &Jail{dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	err := j.limit(cgroupName(dir), cfg.MemMiB, o.Limits)
	if err == nil {
		err = j.network(o.Net, cfg)
	}
	if err == nil {
		err = j.save()
	}
	if err != nil {
		j.Teardown()
		return nil, err
	}
	return j, nil
}

// cgroupName names the cgroup of the instance in run folder dir: the
// folder's name and a digest of its path, so two run folders of one name
// never share a cgroup.
func cgroupName(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	sum := sha256.Sum256([]byte(dir))
	return filepath.Base(dir) + "-" + hex.EncodeToString(sum[:4])
}

// Started is called once QEMU (pid) runs: it caps the files QEMU writes,
// and for outbound starts the forward proxy.
func (j *Jail) Started(pid int) error {
	if j.FileCap > 0 {
		if err := capFiles(pid, j.FileCap); err != nil {
			return err
		}
	}
	return j.startProxy(pid)
}

func (j *Jail) save() error {
	b, _ := json.Marshal(j)
	return os.WriteFile(filepath.Join(j.dir, StateFile), b, 0o600)
}

// Teardown undoes what Prepare set up, the network first, then the
// cgroup (once its processes are gone). It is idempotent.
func (j *Jail) Teardown() {
	j.unnet()
	j.unlimit()
}

// Teardown undoes the confinement of the instance in run folder dir, from
// its StateFile; nothing to do without one.
func Teardown(dir string) {
	if j, err := Read(dir); err == nil {
		j.Teardown()
	}
}

// Read returns the confinement of the instance in dir.
func Read(dir string) (*Jail, error) {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs // as the proxy was told
	}
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, err
	}
	j := &Jail{dir: dir}
	return j, json.Unmarshal(b, j)
}
