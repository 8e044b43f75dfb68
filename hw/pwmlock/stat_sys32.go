//go:build linux && (arm || 386)

package pwmlock

import "golang.org/x/sys/unix"

// On 32-bit linux, unix.Stat_t has the stat64 layout that fstatat64 fills.
const sysFstatat = unix.SYS_FSTATAT64
