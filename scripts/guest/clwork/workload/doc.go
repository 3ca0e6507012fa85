// Package workload generates the deterministic guest workload data used by
// clwork inside the cloudlet test guest. It is a normal package so that host
// side tests can compute the expected content and checksums without the
// guest.
package workload
