// Command clwork is the cloudlet test guest's workload tool. It is built on
// the host as a static Linux binary by scripts/guest-kit.sh and installed in
// the guest as /usr/local/bin/clwork (plus cl-<command> symlinks).
//
//	clwork writefiles --mib N --dir D --seed S [--content mixed|app]  write N MiB of files, fsync
//	clwork fillmem --mib N --seed S [--dir /run/mem] [--content mixed|app]  fill tmpfs (guest RAM)
//	clwork counter --file F [--interval 100ms]   rising number, atomically
//	clwork checksum PATH...                      sha256 per file
//	clwork serve [--port 80] [--dir /www]        busybox httpd (daemonizes)
//
// All content is deterministic from the seed (see package workload). The
// default content, mixed, is half text and half random bytes (the worst
// case for compressors); app is program-like content that compresses
// about 3x, like installed binaries.
package main
