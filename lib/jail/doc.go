// Package jail sets up what confines one synthesized VM before its QEMU
// starts and takes it down after, in a fixed order, as Firecracker's
// jailer does for a microVM. Today that is the network policy:
//
//   - isolated (the default for synthesized VMs): QEMU's user-mode
//     network with restrict=on. The guest reaches nothing, not the host,
//     its loopback (10.0.2.2), other instances or the outside; the
//     forwards, which QEMU opens on the host, still carry connections in.
//     Chosen over a namespace because it costs nothing: no root, no
//     kernel objects, and it works under libvirt.
//   - outbound: QEMU runs in a network namespace of its own
//     (cloudlet-N), joined to the host by a veth pair (clhN on the host,
//     10.213.x.y/30); the host masquerades its traffic to the outside and
//     drops everything it sends to the host itself or to another
//     instance's veth (nftables table "cloudlet"). 10.0.2.2 is then the
//     namespace's own loopback, where nothing of the host listens. QEMU
//     opens the forwards inside the namespace, at the guest side of the
//     veth; a small proxy process (vm-resume net-proxy) listens where the
//     user asked on the host and carries each TCP connection in. It lives
//     as long as QEMU and removes the namespace when QEMU is gone.
//   - host: QEMU's user-mode network as it is, for the operator's own VMs
//     (cloudlet base and overlay): the guest reaches the host's loopback
//     and everything the host reaches.
//
// The policy is the cloudlet's choice at synthesis, never the overlay's:
// it is not in the stream format.
package jail
