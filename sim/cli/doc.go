// Package cli is benchsim's command line: a table of subcommands, each a
// function from arguments to an error. cmd/benchsim only calls Main.
//
// To add a subcommand, call Register from an init function in this package
// (see serve.go and plot.go); Main, the usage text and --help pick it up.
// The CLI parses flags and prints; the work is done by sim and its
// subpackages.
package cli
