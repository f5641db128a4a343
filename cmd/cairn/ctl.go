package main

// The client subcommands (cairn ranges, cairn range split) take etcdctl's
// global client flags, so that what an operator types for etcdctl works
// for them:
//
//   - --endpoints: comma-separated, the scheme optional (127.0.0.1:2379
//     is http://127.0.0.1:2379), tried in order until one answers;
//     default 127.0.0.1:2379. --endpoint (one URL) is kept as an alias.
//   - -w / --write-out: simple (the default: a line per item, fields
//     separated by ", "), json or table (bordered, with a header).
//   - --dial-timeout (2s) and --command-timeout (5s): how long to wait for
//     a connection to one endpoint, and for the command once connected.
//   - ETCDCTL_ENDPOINTS, ETCDCTL_WRITE_OUT, ETCDCTL_DIAL_TIMEOUT and
//     ETCDCTL_COMMAND_TIMEOUT set the flags the command line did not (the
//     command line wins, as etcdctl's).
//   - -h / --help prints the usage on stdout and succeeds.
//
// TLS and authentication flags come with those features.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// ctlEnvPrefix prefixes etcdctl's environment variables.
const ctlEnvPrefix = "ETCDCTL"

// ctlFlags are etcdctl's client flags as a subcommand parsed them.
type ctlFlags struct {
	endpoints      []string // with their scheme: http://host:port
	writeOut       string   // simple, json or table
	dialTimeout    time.Duration
	commandTimeout time.Duration
}

// ctlCommand is one client subcommand's flags and usage.
type ctlCommand struct {
	fs    *flag.FlagSet
	usage string // the synopsis and what the command does
	// raw holds the flags' values as given, until parse checks them.
	endpoints, endpoint string
	c                   ctlFlags
}

// newCtlCommand defines etcdctl's client flags on a new flag set for the
// command name; the command adds its own flags to fs.
func newCtlCommand(name, usage string) *ctlCommand {
	cc := &ctlCommand{fs: flag.NewFlagSet(name, flag.ContinueOnError), usage: usage}
	fs := cc.fs
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&cc.endpoints, "endpoints", "127.0.0.1:2379", "comma-separated client URLs of members, tried in order (the scheme may be left out)")
	fs.StringVar(&cc.endpoint, "endpoint", "", "") // hidden: cairn's earlier flag, one URL
	fs.StringVar(&cc.c.writeOut, "write-out", "simple", "output format: simple, json or table")
	fs.StringVar(&cc.c.writeOut, "w", "simple", "short for --write-out")
	fs.DurationVar(&cc.c.dialTimeout, "dial-timeout", 2*time.Second, "time to wait for a connection to one endpoint")
	fs.DurationVar(&cc.c.commandTimeout, "command-timeout", 5*time.Second, "time to wait for the command once connected")
	return cc
}

// errCtlHelp is returned by parse after printing the usage for -h.
var errCtlHelp = errors.New("help printed")

// parse reads args and then, for the flags args did not set, environ's
// ETCDCTL_* variables. On -h or --help it prints the usage on stdout and
// returns errCtlHelp.
func (cc *ctlCommand) parse(args, environ []string, stdout io.Writer) (ctlFlags, error) {
	if err := cc.fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		cc.printUsage(stdout)
		return ctlFlags{}, errCtlHelp
	} else if err != nil {
		return ctlFlags{}, fmt.Errorf("%v (-h for usage)", err)
	}
	set := map[string]bool{}
	cc.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	env := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := env[k]; !dup {
			env[k] = v
		}
	}
	for _, name := range []string{"endpoints", "write-out", "dial-timeout", "command-timeout"} {
		key := ctlEnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		v := env[key]
		if v == "" || set[name] || name == "endpoints" && set["endpoint"] || name == "write-out" && set["w"] {
			continue
		}
		if err := cc.fs.Set(name, v); err != nil {
			return ctlFlags{}, fmt.Errorf("invalid value %q for %s: %v", v, key, err)
		}
	}
	c := cc.c
	raw := cc.endpoints
	if set["endpoint"] {
		raw = cc.endpoint
	}
	for _, e := range strings.Split(raw, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		u, err := endpointURL(e)
		if err != nil {
			return ctlFlags{}, err
		}
		c.endpoints = append(c.endpoints, u)
	}
	if len(c.endpoints) == 0 {
		return ctlFlags{}, errors.New("no endpoints given")
	}
	switch c.writeOut {
	case "simple", "json", "table":
	default:
		return ctlFlags{}, fmt.Errorf("unsupported output format %q: want simple, json or table", c.writeOut)
	}
	return c, nil
}

// endpointURL is an etcdctl endpoint as a URL: host:port gets http://.
func endpointURL(e string) (string, error) {
	scheme, rest, ok := strings.Cut(e, "://")
	if !ok {
		scheme, rest = "http", e
	}
	switch scheme {
	case "http":
	case "https":
		return "", fmt.Errorf("endpoint %q: TLS is not implemented yet", e)
	default:
		return "", fmt.Errorf("endpoint %q: want host:port or http://host:port", e)
	}
	rest = strings.TrimSuffix(rest, "/")
	if rest == "" || strings.ContainsAny(rest, "/?#") {
		return "", fmt.Errorf("endpoint %q: want host:port or http://host:port", e)
	}
	return "http://" + rest, nil
}

// hostOf is the host:port of an endpoint URL from endpointURL.
func hostOf(endpoint string) string { return strings.TrimPrefix(endpoint, "http://") }

// printUsage prints the command's usage and its flags (not the hidden
// alias), as -h asks.
func (cc *ctlCommand) printUsage(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nFlags:\n", cc.usage)
	cc.fs.VisitAll(func(f *flag.Flag) {
		if f.Usage == "" {
			return
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		kind, help := flag.UnquoteUsage(f)
		if kind != "" {
			kind = " " + kind
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  %s%s%s\n    \t%s%s\n", dash, f.Name, kind, help, def)
	})
	fmt.Fprintf(w, "\nEnvironment: %[1]s_ENDPOINTS, %[1]s_WRITE_OUT, %[1]s_DIAL_TIMEOUT and %[1]s_COMMAND_TIMEOUT set the flags not given.\n", ctlEnvPrefix)
}

// printSimple prints rows as etcdctl's simple format: a line per row,
// fields separated by ", ".
func printSimple(w io.Writer, rows [][]string) {
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, ", "))
	}
}

// printTable prints a bordered table with a header, as etcdctl's table
// format:
//
//	+-------+-------+
//	| RANGE | START |
//	+-------+-------+
//	|     1 | ""    |
//	+-------+-------+
//
// Numbers (cells of digits only) are right-aligned, the rest left.
func printTable(w io.Writer, header []string, rows [][]string) {
	widths := make([]int, len(header))
	for _, r := range append([][]string{header}, rows...) {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var rule strings.Builder
	rule.WriteString("+")
	for _, wd := range widths {
		rule.WriteString(strings.Repeat("-", wd+2) + "+")
	}
	line := func(r []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if isNumber(c) {
				b.WriteString(" " + pad + c + " |")
			} else {
				b.WriteString(" " + c + pad + " |")
			}
		}
		fmt.Fprintln(w, b.String())
	}
	fmt.Fprintln(w, rule.String())
	line(header)
	fmt.Fprintln(w, rule.String())
	for _, r := range rows {
		line(r)
	}
	fmt.Fprintln(w, rule.String())
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
