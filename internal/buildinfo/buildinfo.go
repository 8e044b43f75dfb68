// Package buildinfo holds the version stamped into every command at build
// time (make sets it with -ldflags -X). It must not depend on anything else.
package buildinfo

// Version is the program version, "dev" unless the build sets it.
var Version = "dev"
