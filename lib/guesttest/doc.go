// Package guesttest boots the cloudlet test guest (built by
// scripts/guest-kit.sh, "make kit") under QEMU for tests.
//
// Kit locates the kit (env CLOUDLET_GUEST_DIR, else <repo>/.cache/guest) and
// skips the test when QEMU or the kit is missing, or fails it when CI=true.
// Boot starts a guest in the capturable layout (lib/vm: file-backed shared
// RAM, a fresh qcow2 top layer over the kit's rootfs.img, QMP and serial
// sockets), waits for CLOUDLET-GUEST-READY on the serial console and
// registers a cleanup that always stops QEMU and removes its files. Main is
// a TestMain helper that fails the run if a QEMU started here outlives it.
//
// Environment: CLOUDLET_ACCEL (auto, tcg, kvm; default auto) picks the
// accelerator; CLOUDLET_BOOT_TIMEOUT (a Go duration, default 3m) bounds the
// wait for the ready marker.
package guesttest
