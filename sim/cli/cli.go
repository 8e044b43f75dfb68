package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string // one line for the usage list
	// Run runs the command with the arguments after its name.
	Run func(ctx context.Context, env *Env, args []string) error
}

// Env is what a command sees of the process.
type Env struct {
	Stdout, Stderr io.Writer
}

// ErrUsage is returned for a bad command line; usage has been printed.
var ErrUsage = errors.New("usage")

var commands = map[string]*Command{}

// Register adds a subcommand. It panics on a duplicate name.
func Register(c *Command) {
	if _, dup := commands[c.Name]; dup {
		panic("cli: duplicate command " + c.Name)
	}
	commands[c.Name] = c
}

// Usage writes the list of subcommands.
func Usage(w io.Writer) {
	fmt.Fprintf(w, "benchsim — the bench drone of inflight: a simulated quadcopter whose MPU-6050,\n"+
		"BMP280 and PCA9685 answer at register level over a unix socket bus.\n\n"+
		"Usage: benchsim <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].Summary)
	}
	fmt.Fprintf(w, "\nRun 'benchsim <command> --help' for its flags. docs/bench.md describes the bench.\n")
}

// Main runs the command line args (without the program name) and returns
// the process exit code.
func Main(ctx context.Context, env *Env, args []string) int {
	if len(args) == 0 {
		Usage(env.Stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		Usage(env.Stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "benchsim: unknown command %q\n\n", args[0])
		Usage(env.Stderr)
		return 2
	}
	err := c.Run(ctx, env, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	default:
		fmt.Fprintf(env.Stderr, "benchsim %s: %v\n", c.Name, err)
		return 1
	}
}

// newFlags returns a FlagSet for a command whose usage names its arguments.
func newFlags(env *Env, name, args, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: benchsim %s %s\n\n%s\n\nFlags:\n", name, args, strings.TrimSpace(about))
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags and allows them after positional arguments too.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, ErrUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
