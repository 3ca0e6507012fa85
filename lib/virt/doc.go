// Package virt runs cloudlet VMs as libvirt domains and finds the VMs
// libvirt runs, so that virsh, monitoring and the engines that drive fleets
// of hosts through libvirt (OpenStack Nova, KubeVirt) see what vm-resume
// synthesizes.
//
// A VM is a transient domain (it disappears from libvirt when it ends),
// made from the same vm.Config that lib/vm turns into a QEMU command line:
// DomainXML builds its XML with libvirt.org/go/libvirtxml, using
// libvirt's own elements wherever they express the option, and
// <qemu:commandline> for the few they cannot:
//
//   - the guest RAM as a private (share=off) or shared mapping of a file
//     we name, with the RAM block id the capture side used ("mem"):
//     libvirt's <memoryBacking> names the file itself, under its
//     memory_backing_dir, and calls the block "pc.ram";
//   - a QMP monitor of ours in the run folder, beside libvirt's own, so
//     the resume engine drives the incoming migration and the capture as it
//     does for a QEMU it started;
//   - "-incoming defer": libvirt's own incoming migration takes a save
//     file or a migration from another libvirtd, not a stream we build.
//
// Port forwards are added at run time through that monitor (HMP
// hostfwd_add): libvirt's <portForward> needs the passt backend, whose
// device state differs from the user-mode network the VM was captured
// with.
//
// Start creates the domain paused and adopts its QEMU (vm.Adopt): the
// resume engine then treats it as any other instance; killing it destroys
// the domain. The connection is github.com/digitalocean/go-libvirt (pure
// Go, libvirt's RPC protocol), so any libvirt URI it can dial works.
package virt
