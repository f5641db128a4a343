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
//   - --cacert, --cert, --key and --insecure-skip-tls-verify: TLS to the
//     endpoints (https:// ones, or any once one of them is given): the CA
//     verifying the server, the client certificate and key, and whether
//     to skip the server's verification.
//   - --user (user:password, or user with --password): the command first
//     authenticates (the Auth service's Authenticate) and sends the token
//     with its call, as etcdctl does.
//   - ETCDCTL_ENDPOINTS, ETCDCTL_WRITE_OUT, ETCDCTL_DIAL_TIMEOUT,
//     ETCDCTL_COMMAND_TIMEOUT, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY,
//     ETCDCTL_INSECURE_SKIP_TLS_VERIFY, ETCDCTL_USER and ETCDCTL_PASSWORD
//     set the flags the command line did not (the command line wins, as
//     etcdctl's).
//   - -h / --help prints the usage on stdout and succeeds.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// ctlEnvPrefix prefixes etcdctl's environment variables.
const ctlEnvPrefix = "ETCDCTL"

// ctlFlags are etcdctl's client flags as a subcommand parsed them.
type ctlFlags struct {
	endpoints      []string // with their scheme: http://host:port or https://host:port
	writeOut       string   // simple, json or table
	dialTimeout    time.Duration
	commandTimeout time.Duration
	// tls is the endpoints' TLS (nil: plain).
	tls *tls.Config
	// user and password authenticate the command ("": no auth).
	user, password string
}

// ctlCommand is one client subcommand's flags and usage.
type ctlCommand struct {
	fs    *flag.FlagSet
	usage string // the synopsis and what the command does
	// raw holds the flags' values as given, until parse checks them.
	endpoints, endpoint string
	cacert, cert, key   string
	insecureSkipVerify  bool
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
	fs.StringVar(&cc.cacert, "cacert", "", "verify the servers' certificates with this CA bundle")
	fs.StringVar(&cc.cert, "cert", "", "client TLS certificate")
	fs.StringVar(&cc.key, "key", "", "client TLS key")
	fs.BoolVar(&cc.insecureSkipVerify, "insecure-skip-tls-verify", false, "skip the verification of the servers' certificates")
	fs.StringVar(&cc.c.user, "user", "", "username[:password] to authenticate with")
	fs.StringVar(&cc.c.password, "password", "", "password to authenticate with (--user then names the user alone)")
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
	for _, name := range []string{"endpoints", "write-out", "dial-timeout", "command-timeout", "cacert", "cert", "key",
		"insecure-skip-tls-verify", "user", "password"} {
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
	if c.user != "" && c.password == "" {
		user, password, ok := strings.Cut(c.user, ":")
		if !ok {
			return ctlFlags{}, errors.New("--user without a password: give --user user:password or --password")
		}
		c.user, c.password = user, password
	}
	secure := cc.cacert != "" || cc.cert != "" || cc.key != "" || cc.insecureSkipVerify
	for _, e := range c.endpoints {
		secure = secure || strings.HasPrefix(e, "https://")
	}
	if secure {
		cfg, err := cc.tlsConfig()
		if err != nil {
			return ctlFlags{}, err
		}
		c.tls = cfg
		for i, e := range c.endpoints {
			c.endpoints[i] = "https://" + hostOf(e)
		}
	}
	return c, nil
}

// tlsConfig is the TLS the flags ask for.
func (cc *ctlCommand) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cc.insecureSkipVerify}
	if cc.cacert != "" {
		pem, err := os.ReadFile(cc.cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert: no certificate in %s", cc.cacert)
		}
	}
	if (cc.cert == "") != (cc.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if cc.cert != "" {
		pair, err := tls.LoadX509KeyPair(cc.cert, cc.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// grpcCreds are the transport credentials of a gRPC connection to the
// endpoints.
func (c ctlFlags) grpcCreds() credentials.TransportCredentials {
	if c.tls == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(c.tls.Clone())
}

// authenticate returns the token that the member at endpoint gives
// c.user (the Auth service's Authenticate), "" without --user.
func (c ctlFlags) authenticate(ctx context.Context, endpoint string) (string, error) {
	if c.user == "" {
		return "", nil
	}
	conn, err := grpc.NewClient(hostOf(endpoint), grpc.WithTransportCredentials(c.grpcCreds()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	resp, err := pb.NewAuthClient(conn).Authenticate(ctx, &pb.AuthenticateRequest{Name: c.user, Password: c.password})
	if err != nil {
		return "", fmt.Errorf("authenticate %s: %w", c.user, rpctypes.Error(err))
	}
	return resp.Token, nil
}

// endpointURL is an etcdctl endpoint as a URL: host:port gets http://.
func endpointURL(e string) (string, error) {
	scheme, rest, ok := strings.Cut(e, "://")
	if !ok {
		scheme, rest = "http", e
	}
	switch scheme {
	case "http", "https":
	default:
		return "", fmt.Errorf("endpoint %q: want host:port or http://host:port", e)
	}
	rest = strings.TrimSuffix(rest, "/")
	if rest == "" || strings.ContainsAny(rest, "/?#") {
		return "", fmt.Errorf("endpoint %q: want host:port or http://host:port", e)
	}
	return scheme + "://" + rest, nil
}

// hostOf is the host:port of an endpoint URL from endpointURL.
func hostOf(endpoint string) string {
	_, rest, _ := strings.Cut(endpoint, "://")
	return rest
}

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
	fmt.Fprintf(w, "\nEnvironment: %[1]s_ENDPOINTS, %[1]s_WRITE_OUT, %[1]s_DIAL_TIMEOUT, %[1]s_COMMAND_TIMEOUT, %[1]s_CACERT, %[1]s_CERT, %[1]s_KEY, %[1]s_INSECURE_SKIP_TLS_VERIFY, %[1]s_USER and %[1]s_PASSWORD set the flags not given.\n", ctlEnvPrefix)
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
