//go:build linux && (amd64 || arm64 || riscv64 || arm || 386)

package pwmlock

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// statz is stat(2) of a NUL-terminated path, without the allocation that
// unix.Stat makes to convert its string argument.
func statz(pathz []byte, st *unix.Stat_t) error {
	dirfd := unix.AT_FDCWD
	_, _, e := unix.Syscall6(sysFstatat, uintptr(dirfd), uintptr(unsafe.Pointer(&pathz[0])), uintptr(unsafe.Pointer(st)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
