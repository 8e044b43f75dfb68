// Package cli is groundctl's command line: subcommands, flags, output
// (tables, progress bars, JSON lines) and exit codes, over package ground.
// cmd/groundctl only calls Run.
//
// It must never read or print a private key's bytes, and it writes results
// to stdout and diagnostics to stderr, so that --json output stays
// parseable.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/inflight-ota/inflight/ground"
	"github.com/inflight-ota/inflight/ground/keys"
	"github.com/inflight-ota/inflight/internal/buildinfo"
	"github.com/inflight-ota/inflight/mqttapi"
	"github.com/inflight-ota/inflight/mqttapi/mqttc"
)

// Exit codes.
const (
	ExitOK       = 0 // done; for watch and --watch/--wait: committed (or rolled back as asked)
	ExitFailure  = 1 // an error: broker unreachable, bad key, timeout, ...
	ExitUsage    = 2 // bad command line
	ExitUpdate   = 3 // the update ended but did not commit (rolled back, aborted, rejected, failed)
	ExitNotFound = 4 // status/watch of a drone nothing is known of
)

// Environment variables read for flag defaults.
const (
	EnvBroker   = "INFLIGHT_BROKER"
	EnvKey      = "INFLIGHT_KEY"
	EnvRoot     = "INFLIGHT_ROOT"
	EnvUser     = "INFLIGHT_MQTT_USERNAME"
	EnvPassword = "INFLIGHT_MQTT_PASSWORD"
)

type env struct {
	stdout, stderr io.Writer
}

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, e *env, args []string) int
}

var commands []command

func init() {
	commands = []command{
		{"keygen", "[--out DIR] [--name NAME]", "make an ed25519 signing key pair", runKeygen},
		{"push", "--drone ID | --fleet NAME --image REF [flags]", "sign and publish an update (optionally send the image over MQTT, then watch it)", runPush},
		{"watch", "ID [--serial N] [--timeout D] [--json]", "follow an update to its end with a progress bar", runWatch},
		{"status", "[--json]", "table of every drone seen", runStatus},
		{"rollback", "ID [--reason TEXT] [--wait]", "ask a drone to roll back to its previous version (signed)", runRollback},
		{"cancel", "ID [--reason TEXT] [--wait]", "ask a drone to cancel the update in progress (signed)", runCancel},
		{"broker", "[--listen ADDR] [--auth FILE]", "run an embedded MQTT broker", runBroker},
		{"version", "", "print groundctl's version", func(_ context.Context, e *env, _ []string) int {
			fmt.Fprintln(e.stdout, "groundctl", buildinfo.Version)
			return ExitOK
		}},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "groundctl: the inflight ground station — sign and push in-air updates, watch them, see the fleet.\n\n")
	fmt.Fprintf(w, "Usage:\n  groundctl <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'groundctl <command> --help' for its flags.\n")
	fmt.Fprintf(w, "Exit codes: 0 ok, 1 failure, 2 usage, 3 update did not commit, 4 drone not seen.\n")
	fmt.Fprintf(w, "Environment: %s, %s, %s, %s, %s set flag defaults.\n", EnvBroker, EnvKey, EnvRoot, EnvUser, EnvPassword)
}

// Run runs groundctl with args (without the program name) and returns the
// exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return ExitUsage
	}
	switch args[0] {
	case "-h", "--help", "help", "-help":
		usage(stdout)
		return ExitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	fmt.Fprintf(stderr, "groundctl: unknown command %q\n\n", args[0])
	usage(stderr)
	return ExitUsage
}

func newFlags(e *env, name, args, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: groundctl %s %s\n\n%s\n\nFlags:\n", name, args, summary)
		fs.PrintDefaults()
	}
	return fs
}

func cmdFlags(e *env, name string) *flag.FlagSet {
	for _, c := range commands {
		if c.name == name {
			return newFlags(e, name, c.args, c.summary)
		}
	}
	panic("cli: no command " + name)
}

// parse parses flags and positional arguments in any order ("watch d1
// --json" as well as "watch --json d1"). A help request returns ExitOK
// through done.
func parse(e *env, fs *flag.FlagSet, args []string) (pos []string, code int, done bool) {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(e.stdout)
			fs.Usage()
			return nil, ExitOK, true
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, ExitUsage, true
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, 0, false
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), 0, false
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func usageErr(e *env, fs *flag.FlagSet, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "groundctl %s: %s\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.Usage()
	return ExitUsage
}

func fail(e *env, cmd string, err error) int {
	fmt.Fprintf(e.stderr, "groundctl %s: %v\n", cmd, err)
	switch {
	case errors.Is(err, ground.ErrUpdateFailed):
		return ExitUpdate
	case errors.Is(err, ground.ErrNoDrone):
		return ExitNotFound
	}
	return ExitFailure
}

// conn holds the flags every MQTT command shares.
type conn struct {
	broker, root, user, password string
	caFile, certFile, keyFile    string
	clientID                     string
	connectTimeout               time.Duration
	verbose                      bool
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (c *conn) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.broker, "broker", envOr(EnvBroker, "tcp://127.0.0.1:1883"), "MQTT broker URL: tcp://host:port, or ssl://host:port for TLS (env "+EnvBroker+")")
	fs.StringVar(&c.root, "root", envOr(EnvRoot, mqttapi.DefaultRoot), "first level(s) of every inflight topic (env "+EnvRoot+")")
	fs.StringVar(&c.user, "username", os.Getenv(EnvUser), "MQTT user name (env "+EnvUser+")")
	fs.StringVar(&c.password, "password", "", "MQTT password (better: env "+EnvPassword+")")
	fs.StringVar(&c.caFile, "tls-ca", "", "PEM CA file to verify the broker (TLS)")
	fs.StringVar(&c.certFile, "tls-cert", "", "PEM client certificate (TLS)")
	fs.StringVar(&c.keyFile, "tls-key", "", "PEM client certificate key (TLS)")
	fs.StringVar(&c.clientID, "client-id", "", "MQTT client id (default: groundctl-<pid>-<time>)")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 5*time.Second, "give up connecting to the broker after this long")
	fs.BoolVar(&c.verbose, "v", false, "log what happens to stderr")
}

func (c *conn) logger(e *env) *slog.Logger {
	if !c.verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// station connects and returns the station; close it with the returned
// function.
func (c *conn) station(ctx context.Context, e *env) (*ground.Station, func(), error) {
	topics, err := mqttapi.NewTopics(c.root)
	if err != nil {
		return nil, nil, err
	}
	if c.password == "" {
		c.password = os.Getenv(EnvPassword)
	}
	id := c.clientID
	if id == "" {
		id = fmt.Sprintf("groundctl-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	}
	log := c.logger(e)
	cctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	defer cancel()
	cl, err := mqttc.Connect(cctx, mqttc.Options{
		Broker: c.broker, ClientID: id, Username: c.user, Password: c.password,
		CAFile: c.caFile, CertFile: c.certFile, KeyFile: c.keyFile,
		ConnectTimeout: c.connectTimeout, MaxReconnectInterval: 2 * time.Second, Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	st, err := ground.New(ground.Options{Conn: cl, Topics: topics, Logger: log})
	if err != nil {
		cl.Close(0)
		return nil, nil, err
	}
	return st, func() { cl.Close(250 * time.Millisecond) }, nil
}

// DefaultKeyDir is where keygen writes and push looks for the key:
// $XDG_CONFIG_HOME/inflight, or ~/.config/inflight.
func DefaultKeyDir() string {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "inflight")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".config", "inflight")
	}
	return "."
}

func defaultKey() string {
	return envOr(EnvKey, filepath.Join(DefaultKeyDir(), keys.PrivateName))
}

func runKeygen(_ context.Context, e *env, args []string) int {
	fs := cmdFlags(e, "keygen")
	out := fs.String("out", DefaultKeyDir(), "directory for NAME.key (private, 0600) and NAME.pub (public)")
	nm := fs.String("name", strings.TrimSuffix(keys.PrivateName, ".key"), "base name of the key files")
	force := fs.Bool("force", false, "overwrite existing key files")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	pos, code, done := parse(e, fs, args)
	if done {
		return code
	}
	if len(pos) > 0 {
		return usageErr(e, fs, "unexpected argument %q", pos[0])
	}
	if err := mqttapi.ValidateID(*nm); err != nil {
		return usageErr(e, fs, "--name: %v", err)
	}
	priv := filepath.Join(*out, *nm+".key")
	pub := filepath.Join(*out, *nm+".pub")
	id, err := keys.Keygen(priv, pub, *force, nil)
	if err != nil {
		return fail(e, "keygen", err)
	}
	if *asJSON {
		return printJSON(e, map[string]string{"key_id": id, "private": priv, "public": pub})
	}
	fmt.Fprintf(e.stdout, "key %s\n  private %s (keep it on the ground station)\n  public  %s (copy it into each drone's trusted keys)\n", id, priv, pub)
	return ExitOK
}
