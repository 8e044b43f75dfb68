//go:build !(linux && (amd64 || arm64 || riscv64 || arm || 386))

package pwmlock

import "golang.org/x/sys/unix"

// statz falls back to unix.Stat, which allocates to convert the path.
func statz(pathz []byte, st *unix.Stat_t) error {
	return unix.Stat(string(pathz[:len(pathz)-1]), st)
}
