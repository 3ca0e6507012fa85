package lazyfs

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	// fsType is the mount's type in /proc/self/mountinfo ("fuse." + Name).
	fsType = "fuse.lazyfs"
	// fsName is the mount's source.
	fsName = "cloudlet-lazyfs"
	// defaultReadAhead is the default Options.MaxReadAhead, which is also
	// the most the kernel allows a FUSE mount.
	defaultReadAhead = 128 << 10
	// maxBackground is the number of asynchronous (readahead) requests
	// the kernel keeps in flight before it queues more; a readahead
	// waiting for an expected range holds one, so the kernel default
	// (12) would let a few waiting faults stall reads of the base.
	maxBackground = 256
	// attrTimeout: names and sizes never change while mounted.
	attrTimeout = time.Hour
)

// Options configure a mount.
type Options struct {
	// StoreDir holds the sparse scratch files with the arrived data
	// (default os.TempDir()); they are unlinked at once.
	StoreDir string
	// MaxReadAhead bounds kernel readahead in bytes (default 128 KiB),
	// so that one page fault never waits for far-away pages still in
	// flight.
	MaxReadAhead int
	// Debug logs FUSE requests to stderr.
	Debug bool
}

// Server is a mounted lazyfs.
type Server struct {
	dir    string
	images []*Image
	srv    *fuse.Server
	served chan struct{} // closed when Serve returned

	seq atomic.Int64 // orders first reads across the images

	mu          sync.Mutex
	unmounted   bool
	unmountErr  error
	unmountDone chan struct{}
}

// Mount serves images as files dir/<name> (read-only, mode 0444, owned by
// root) until Unmount. dir must exist and be empty.
func Mount(dir string, images []*Image, o Options) (*Server, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	dir = abs
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("lazyfs: mount: %w", err)
	}
	if len(ents) != 0 {
		return nil, fmt.Errorf("lazyfs: mount: %s is not empty", dir)
	}
	names := map[string]bool{}
	for _, im := range images {
		if im == nil {
			return nil, errors.New("lazyfs: mount: nil image")
		}
		if im.name == "" || im.name == "." || im.name == ".." || strings.ContainsAny(im.name, "/\x00") {
			return nil, fmt.Errorf("lazyfs: mount: bad image name %q", im.name)
		}
		if names[im.name] {
			return nil, fmt.Errorf("lazyfs: mount: two images named %q", im.name)
		}
		if im.size < 0 {
			return nil, fmt.Errorf("lazyfs: mount: image %q has negative size", im.name)
		}
		names[im.name] = true
	}
	if o.StoreDir == "" {
		o.StoreDir = os.TempDir()
	}
	if st, err := os.Stat(o.StoreDir); err != nil {
		return nil, fmt.Errorf("lazyfs: mount: store dir: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("lazyfs: mount: store dir %s is not a directory", o.StoreDir)
	}
	if o.MaxReadAhead <= 0 {
		o.MaxReadAhead = defaultReadAhead
	}
	for i, im := range images {
		im.mu.Lock()
		taken := im.mounted
		im.mounted = true
		im.storeDir = o.StoreDir
		im.mu.Unlock()
		if taken {
			for _, prev := range images[:i] {
				prev.mu.Lock()
				prev.mounted = false
				prev.mu.Unlock()
			}
			return nil, fmt.Errorf("lazyfs: mount: image %q is mounted already", im.name)
		}
	}

	images = slices.Clone(images)
	s := &Server{dir: dir, images: images, served: make(chan struct{})}
	for _, im := range images {
		im.mu.Lock()
		im.seq = &s.seq
		im.mu.Unlock()
	}
	mtime := time.Now()
	timeout := attrTimeout
	opts := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		MountOptions: fuse.MountOptions{
			AllowOther:    os.Geteuid() == 0,
			FsName:        fsName,
			Name:          "lazyfs",
			DirectMount:   true,
			MaxReadAhead:  o.MaxReadAhead,
			MaxBackground: maxBackground,
			Debug:         o.Debug,
		},
	}
	root := &rootNode{images: images, mtime: mtime}
	srv, err := fuse.NewServer(fs.NewNodeFS(root, opts), dir, &opts.MountOptions)
	if err != nil {
		for _, im := range images {
			im.mu.Lock()
			im.mounted = false
			im.mu.Unlock()
		}
		return nil, fmt.Errorf("lazyfs: mount %s: %w", dir, err)
	}
	s.srv = srv
	closeFUSEOnExec()
	go func() {
		srv.Serve()
		close(s.served)
	}()
	if err := srv.WaitMount(); err != nil {
		s.Unmount()
		return nil, fmt.Errorf("lazyfs: mount %s: %w", dir, err)
	}
	return s, nil
}

// closeFUSEOnExec marks this process's /dev/fuse descriptors
// close-on-exec. go-fuse opens /dev/fuse without O_CLOEXEC when it mounts
// directly (as root): a child started afterwards (QEMU) would inherit the
// connection and keep it alive after this process died, and then hang in
// its own reads (and at exit, in the flush of the served file) waiting for
// a server that is gone, instead of failing with ENOTCONN.
func closeFUSEOnExec() {
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if t, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && t == "/dev/fuse" {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				syscall.CloseOnExec(fd)
			}
		}
	}
}

// Access is a run of pages of one image first read through the mount.
type Access struct {
	Image          string
	Offset, Length int64 // bytes, multiples of 4096 (Length may end at the image's end)
}

// Accesses returns the first reads of every image of the mount, in the
// order the kernel asked for them (Image.Accesses, merged across images).
func (s *Server) Accesses() []Access {
	type run struct {
		pageRun
		im *Image
	}
	var runs []run
	for _, im := range s.images {
		im.mu.Lock()
		for _, r := range im.accesses {
			runs = append(runs, run{r, im})
		}
		im.mu.Unlock()
	}
	slices.SortStableFunc(runs, func(a, b run) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]Access, 0, len(runs))
	for _, r := range runs {
		out = append(out, Access{Image: r.im.name, Offset: r.first * pageSize, Length: min(r.n*pageSize, r.im.size-r.first*pageSize)})
	}
	return out
}

// Unmount unmounts (fusermount -u, falling back to a lazy unmount when
// busy), waits for the serving goroutines, and removes the scratch files.
// Safe to call twice.
//
// Reads waiting for expected data fail with EIO. When a file is still open
// (a QEMU still running), the unmount is busy: the connection is then
// aborted (umount -f), so that every later read of the open files fails
// with ENOTCONN instead of hanging, and the mount point is detached.
func (s *Server) Unmount() error {
	s.mu.Lock()
	if s.unmounted {
		done := s.unmountDone
		s.mu.Unlock()
		<-done
		return s.unmountErr
	}
	s.unmounted = true
	s.unmountDone = make(chan struct{})
	s.mu.Unlock()

	for _, im := range s.images {
		im.mu.Lock()
		im.closed = true
		im.broadcast()
		im.mu.Unlock()
	}
	err := unmount(s.dir, true)
	if err == nil {
		select {
		case <-s.served:
		case <-time.After(10 * time.Second):
			// Unmounted, yet the kernel keeps the connection:
			// something (a bind mount, a namespace) still holds
			// it.
			err = fmt.Errorf("lazyfs: unmount %s: the connection is still alive", s.dir)
		}
	}
	for _, im := range s.images {
		im.closeStore()
	}
	s.unmountErr = err
	close(s.unmountDone)
	return err
}

// unmount unmounts dir: with fusermount3 -u or fusermount -u when present
// (umount2 otherwise), and when busy (files still open) with umount -f,
// which aborts the FUSE connection so that the serving goroutines exit
// and waiting readers fail, then a lazy unmount.
func unmount(dir string, force bool) error {
	var err error
	if bin := fusermount(); bin != "" {
		var out []byte
		out, err = exec.Command(bin, "-u", "-q", dir).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%s -u %s: %v: %s", bin, dir, err, bytes.TrimSpace(out))
		}
	} else {
		err = syscall.Unmount(dir, 0)
	}
	if err == nil || !mounted(dir) {
		return nil
	}
	flags := syscall.MNT_DETACH
	if force {
		flags |= syscall.MNT_FORCE
	}
	if err2 := syscall.Unmount(dir, flags); err2 != nil && mounted(dir) {
		return fmt.Errorf("lazyfs: unmount %s: %v; lazy: %v", dir, err, err2)
	}
	return nil
}

// fusermount returns the path of fusermount3 or fusermount, or "".
func fusermount() string {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// mounted reports whether dir is a lazyfs mount point in this process's
// mount namespace.
func mounted(dir string) bool {
	ok, _ := mountedAt(dir)
	return ok
}

// mountedAt reads /proc/self/mountinfo for a lazyfs mount at dir.
func mountedAt(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			continue
		}
		if unescapeMountinfo(fields[4]) == dir && fields[sep+1] == fsType {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) of a
// path in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Cleanup unmounts a stale lazyfs mount at dir, as a process killed while
// serving it (SIGKILL) leaves behind: the mount point then fails every
// access with ENOTCONN ("transport endpoint is not connected") until it is
// unmounted. It does nothing when dir is not a lazyfs mount point. A mount
// that a live process still serves is unmounted too, so call it only for
// a folder whose owner is known to be gone.
func Cleanup(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for i := 0; i < 8; i++ { // mounts may be stacked
		ok, err := mountedAt(abs)
		if err != nil {
			return fmt.Errorf("lazyfs: cleanup %s: %w", abs, err)
		}
		if !ok {
			return nil
		}
		if err := unmount(abs, true); err != nil {
			return fmt.Errorf("lazyfs: cleanup: %w", err)
		}
	}
	return fmt.Errorf("lazyfs: cleanup %s: still mounted", abs)
}

// rootNode is the mount's directory.
type rootNode struct {
	fs.Inode
	images []*Image
	mtime  time.Time
}

var (
	_ fs.NodeOnAdder   = (*rootNode)(nil)
	_ fs.NodeGetattrer = (*rootNode)(nil)
	_ fs.NodeCreater   = (*rootNode)(nil)
	_ fs.NodeMkdirer   = (*rootNode)(nil)
	_ fs.NodeMknoder   = (*rootNode)(nil)
	_ fs.NodeSymlinker = (*rootNode)(nil)
	_ fs.NodeLinker    = (*rootNode)(nil)
	_ fs.NodeUnlinker  = (*rootNode)(nil)
	_ fs.NodeRmdirer   = (*rootNode)(nil)
	_ fs.NodeRenamer   = (*rootNode)(nil)
	_ fs.NodeSetattrer = (*rootNode)(nil)
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeReader    = (*fileNode)(nil)
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeWriter    = (*fileNode)(nil)
	_ fs.NodeSetattrer = (*fileNode)(nil)
	_ fs.NodeAllocater = (*fileNode)(nil)
)

func (r *rootNode) OnAdd(ctx context.Context) {
	for i, im := range r.images {
		ch := r.NewPersistentInode(ctx, &fileNode{im: im, mtime: r.mtime},
			fs.StableAttr{Mode: syscall.S_IFREG, Ino: uint64(i) + 2})
		r.AddChild(im.name, ch, false)
	}
}

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	out.Uid, out.Gid = 0, 0
	out.SetTimes(&r.mtime, &r.mtime, &r.mtime)
	return 0
}

func (r *rootNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (r *rootNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *rootNode) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (r *rootNode) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (r *rootNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (r *rootNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// fileNode is one image.
type fileNode struct {
	fs.Inode
	im    *Image
	mtime time.Time
}

func (n *fileNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Uid, out.Gid = 0, 0
	out.Size = uint64(n.im.size)
	out.Blksize = pageSize
	out.Blocks = (uint64(n.im.size) + 511) / 512
	out.SetTimes(&n.mtime, &n.mtime, &n.mtime)
	return 0
}

// Open accepts any access mode: QEMU before 8.2 opens a memory-backend-file
// O_RDWR even with share=off (it maps it privately, so nothing is written).
// Writes fail with EROFS. FOPEN_KEEP_CACHE keeps the pages read once in the
// page cache across opens.
func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *fileNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := n.im.size
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	if int64(len(dest)) > size-off {
		dest = dest[:size-off]
	}
	if errno := n.im.readAt(ctx, dest, off, true); errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(dest), 0
}

func (n *fileNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

func (n *fileNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (n *fileNode) Allocate(ctx context.Context, f fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	return syscall.EROFS
}
