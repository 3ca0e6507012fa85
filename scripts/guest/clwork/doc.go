// Command clwork is the cloudlet test guest's workload tool. It is built on
// the host as a static Linux binary by scripts/guest-kit.sh and installed in
// the guest as /usr/local/bin/clwork (plus cl-<command> symlinks).
//
//	clwork writefiles --mib N --dir D --seed S   write N MiB of files, fsync
//	clwork fillmem --mib N --seed S [--dir /run/mem]  fill tmpfs (guest RAM)
//	clwork counter --file F [--interval 100ms]   rising number, atomically
//	clwork checksum PATH...                      sha256 per file
//	clwork serve [--port 80] [--dir /www]        busybox httpd (daemonizes)
//
// All content is deterministic from the seed (see package workload).
package main
