// Package vm launches QEMU (qemu-system-x86_64) in cloudlet's "capturable
// layout" and manages the process.
//
// The command line is always built from a typed Config, never from
// free-form strings read from a stream: names, paths, machine and CPU models
// are checked against conservative character sets (no commas, so nothing can
// be smuggled into QEMU's key=value option syntax), and only ExtraArgs, which
// come from the user's own command line, pass through unchecked.
//
// The layout of one instance, all inside Config.RunDir (created 0700):
//
//	qmp.sock     QMP control socket (server, nowait)
//	serial.sock  guest serial console (ttyS0) as a unix socket (server, nowait)
//	serial.log   everything the guest printed on the serial console
//	qemu.pid     QEMU's pidfile
//	qemu.log     QEMU's own stdout/stderr
//	mem.ram      guest RAM (memory-backend-file) unless Config.MemPath is set
//
// Guest RAM is a memory-backend-file: with MemShare (share=on) the RAM is the
// file page for page, so a capture with x-ignore-shared leaves RAM out of the
// migration stream. With MemShare false (share=off, MAP_PRIVATE) a base memory
// file can be mapped for a resume without ever being written; free page
// reporting, which would punch holes in it, is then refused.
//
// QEMU is started in its own session (Setsid) so it can outlive the tool that
// launched it; Attach re-opens an instance from its run folder.
//
// Acceleration "auto" means KVM only when /dev/kvm can be opened and a short
// KVM probe boot of the configured kernel succeeded (the verdict is cached
// per QEMU version and kernel in the user's cache folder); otherwise TCG. On
// machines where /dev/kvm exists but KVM guests hang, the probe times out
// once (about 10 s) and TCG is used from then on.
package vm
