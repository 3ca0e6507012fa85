package guestmem

// System call numbers (include/uapi/asm-generic/unistd.h); package
// syscall does not define them.
const (
	sysProcessVMReadv  = 270
	sysProcessVMWritev = 271
)
