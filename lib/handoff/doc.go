// Package handoff moves a running instance to another cloudlet that holds
// the same base (vm-handoff): an iterative pre-copy written as a live
// overlay stream (SPEC.md, header field live), which the destination's
// overlay-apply | vm-resume takes like any other.
//
// The rooms:
//
//   - track.go: what the destination holds, page by page and block by
//     block, so that only what differs from it is sent (the base at first,
//     then the latest version sent);
//   - link.go: the output, metered, for the link's rate;
//   - send.go: the order of steps: disk pass, QEMU's live migration read
//     from a local socket, the switchover we choose from the link's rate
//     and the passes' sizes, the final disk pass while the source is
//     paused, the device state, END.
//
// QEMU's precopy tracks the dirty RAM (under TCG too); its first pass
// sends every page, and the tracker drops those equal to the base. The
// disk is read from the instance's qcow2 top layer: once while the VM
// runs, then again while it is paused before the switchover, when only
// the blocks that differ from what was sent go out.
package handoff
