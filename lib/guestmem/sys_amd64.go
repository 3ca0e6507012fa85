package guestmem

// System call numbers (arch/x86/entry/syscalls/syscall_64.tbl); package
// syscall does not define them.
const (
	sysProcessVMReadv  = 310
	sysProcessVMWritev = 311
)
