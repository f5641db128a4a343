package main

// --config-file: etcd's YAML configuration file. Its keys are etcd's flag
// names (etcd's embed.Config JSON tags), so each value goes through the
// flag of the same name and means what the flag means:
//
//   - scalars as the flag reads them; a list (log-outputs) comma-joined;
//     a number for a duration flag is nanoseconds, as etcd's time.Duration
//     fields read it;
//   - client-transport-security and peer-transport-security are maps of
//     TLS settings that become the TLS flags (ignored until TLS), and
//     socket-options the socket-reuse-* flags;
//   - empty values, and false for a flag Cairn ignores, are left out;
//   - keys that name no flag are logged at warn and skipped (etcd skips
//     them silently).
//
// As in etcd, a config file (--config-file or ETCD_CONFIG_FILE) makes
// cairn ignore every other flag and ETCD_* variable, and say so in the log.

import (
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// securityKeys maps the keys of etcd's *-transport-security maps to the
// flags they stand for, client's then peer's.
var securityKeys = map[string][2]string{
	"cert-file":                    {"cert-file", "peer-cert-file"},
	"key-file":                     {"key-file", "peer-key-file"},
	"client-cert-file":             {"client-cert-file", "peer-client-cert-file"},
	"client-key-file":              {"client-key-file", "peer-client-key-file"},
	"client-cert-auth":             {"client-cert-auth", "peer-client-cert-auth"},
	"trusted-ca-file":              {"trusted-ca-file", "peer-trusted-ca-file"},
	"auto-tls":                     {"auto-tls", "peer-auto-tls"},
	"allowed-cn":                   {"", "peer-cert-allowed-cn"},
	"allowed-hostname":             {"client-cert-allowed-hostname", "peer-cert-allowed-hostname"},
	"skip-client-san-verification": {"", "peer-skip-client-san-verification"},
}

// applyConfigFile sets fs's flags from etcd's YAML config file at path,
// and returns what to log about it and the flags it set.
func applyConfigFile(fs *flag.FlagSet, path string) ([]note, map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--config-file: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, nil, fmt.Errorf("--config-file %s: %w", path, err)
	}
	notes := []note{{slog.LevelInfo, "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided",
		[]any{"path", path}}}
	set := map[string]bool{}
	apply := func(key, name string, v any) error {
		f := fs.Lookup(name)
		if f == nil || name == "config-file" {
			notes = append(notes, note{slog.LevelWarn, "unrecognized key in the config file; ignoring it", []any{"key", key}})
			return nil
		}
		s, ok, err := flagString(f, v)
		if err != nil {
			return fmt.Errorf("--config-file %s: %s: %w", path, key, err)
		}
		if !ok {
			return nil
		}
		if err := fs.Set(name, s); err != nil {
			return fmt.Errorf("--config-file %s: %s: %w", path, key, err)
		}
		set[name] = true
		return nil
	}
	for _, key := range slices.Sorted(maps.Keys(doc)) {
		v := doc[key]
		var err error
		switch key {
		case "client-transport-security", "peer-transport-security":
			m, ok := v.(map[string]any)
			if v != nil && !ok {
				return nil, nil, fmt.Errorf("--config-file %s: %s: want a map", path, key)
			}
			side := 0
			if key == "peer-transport-security" {
				side = 1
			}
			for _, k := range slices.Sorted(maps.Keys(m)) {
				name := securityKeys[k][side]
				if name == "" {
					name = key + "." + k // names no flag: warned about
				}
				if err = apply(key+"."+k, name, m[k]); err != nil {
					break
				}
			}
		case "socket-options":
			m, _ := v.(map[string]any)
			for _, k := range slices.Sorted(maps.Keys(m)) {
				if err = apply(key+"."+k, "socket-"+k, m[k]); err != nil {
					break
				}
			}
		default:
			err = apply(key, key, v)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return notes, set, nil
}

// flagString is a YAML value as f's command-line value; ok is false for a
// value that sets nothing (empty, or false for an ignored flag).
func flagString(f *flag.Flag, v any) (s string, ok bool, err error) {
	_, ignored := f.Value.(*ignoredValue)
	switch v := v.(type) {
	case nil:
		return "", false, nil
	case string:
		return v, v != "", nil
	case bool:
		return strconv.FormatBool(v), v || !ignored, nil
	case float64:
		if g, isGetter := f.Value.(flag.Getter); isGetter {
			if _, isDuration := g.Get().(time.Duration); isDuration {
				return time.Duration(int64(v)).String(), true, nil // etcd's durations are nanoseconds
			}
		}
		return strconv.FormatFloat(v, 'f', -1, 64), true, nil
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			switch e := e.(type) {
			case string:
				parts = append(parts, e)
			case float64:
				parts = append(parts, strconv.FormatFloat(e, 'f', -1, 64))
			case bool:
				parts = append(parts, strconv.FormatBool(e))
			default:
				return "", false, fmt.Errorf("a list of %T", e)
			}
		}
		return strings.Join(parts, ","), len(parts) > 0, nil
	}
	return "", false, fmt.Errorf("want a scalar or a list, not %T", v)
}
