package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/slogtest"
	"time"

	dblogger "github.com/lni/dragonboat/v4/logger"
)

// etcdTS is etcd's "ts" layout, 2006-01-02T15:04:05.000000Z0700.
var etcdTS = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d{4})$`)

// testLogger is a JSON logger at level writing into a buffer.
func testLogger(t *testing.T, level slog.Level) (*slog.Logger, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	log, closeFn, err := NewLogger(LogConfig{Level: level, Stderr: &buf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closeFn() })
	return log, &buf
}

// keysInOrder returns the top-level keys of one JSON line in their order.
func keysInOrder(t *testing.T, line string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %q (%v)", line, err)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
	}
	return keys
}

func lines(buf *bytes.Buffer) []string {
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

// above is the short caller, as etcd writes it, of the line n lines above
// the one that calls it.
func above(n int) string {
	_, file, line, _ := runtime.Caller(1)
	return filepath.Base(filepath.Dir(file)) + "/" + filepath.Base(file) + ":" + strconv.Itoa(line-n)
}

// TestZapHandlerSlog: the handler keeps slog's handler contract (testing/
// slogtest: attributes, groups, empty groups left out, WithAttrs and
// WithGroup, LogValuer resolution, zero time left out), with etcd's "ts"
// in the place of slog's "time".
func TestZapHandlerSlog(t *testing.T) {
	log, buf := testLogger(t, slog.LevelDebug)
	results := func() []map[string]any {
		var ms []map[string]any
		for _, l := range lines(buf) {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			if ts, ok := m["ts"]; ok {
				m[slog.TimeKey] = ts
				delete(m, "ts")
			}
			delete(m, "caller")
			ms = append(ms, m)
		}
		return ms
	}
	if err := slogtest.TestHandler(log.Handler(), results); err != nil {
		t.Fatal(err)
	}
}

// TestZapHandlerLine: a line has etcd's keys in etcd's order (level, ts,
// caller, msg, then the fields), etcd's time layout, lower-case levels,
// the caller of the log call, and fields encoded as etcd's zap config
// encodes them; a logger attribute names the logger as zap's named
// loggers do, and levels below the logger's are dropped.
func TestZapHandlerLine(t *testing.T) {
	log, buf := testLogger(t, slog.LevelInfo)
	log.Debug("dropped")
	log.Info("hello", "count", 3, "took", 1500*time.Millisecond, "error", errors.New("boom"),
		slog.Group("peer", "id", "ab"))
	caller := above(2)
	log.With("logger", "raft").Warn("named")
	namedCaller := above(1)
	log.WithGroup("g").With("a", 1).Error("grouped", "b", 2)

	got := lines(buf)
	if len(got) != 3 {
		t.Fatalf("want 3 lines, got:\n%s", buf)
	}
	want := []struct {
		keys   []string
		values map[string]any
	}{
		{[]string{"level", "ts", "caller", "msg", "count", "took", "error", "peer"}, map[string]any{
			"level": "info", "caller": caller, "msg": "hello", "count": 3.0, "took": "1.5s", "error": "boom",
			"peer": map[string]any{"id": "ab"}}},
		{[]string{"level", "ts", "logger", "caller", "msg"}, map[string]any{
			"level": "warn", "logger": "raft", "caller": namedCaller, "msg": "named"}},
		{[]string{"level", "ts", "caller", "msg", "g"}, map[string]any{
			"level": "error", "msg": "grouped", "g": map[string]any{"a": 1.0, "b": 2.0}}},
	}
	for i, w := range want {
		if keys := keysInOrder(t, got[i]); !slices.Equal(keys, w.keys) {
			t.Errorf("line %d keys %q, want %q", i, keys, w.keys)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(got[i]), &m); err != nil {
			t.Fatal(err)
		}
		if ts, _ := m["ts"].(string); !etcdTS.MatchString(ts) {
			t.Errorf("line %d ts %q is not in etcd's layout", i, ts)
		}
		for k, v := range w.values {
			gj, _ := json.Marshal(m[k])
			wj, _ := json.Marshal(v)
			if !bytes.Equal(gj, wj) {
				t.Errorf("line %d %s = %s, want %s", i, k, gj, wj)
			}
		}
	}
}

// dbForward stands for dragonboat's package logger, which forwards to the
// factory's logger: records must carry the call site above it.
type dbForward struct{ l dblogger.ILogger }

func (f dbForward) Infof(format string, args ...any)    { f.l.Infof(format, args...) }
func (f dbForward) Warningf(format string, args ...any) { f.l.Warningf(format, args...) }
func (f dbForward) Errorf(format string, args ...any)   { f.l.Errorf(format, args...) }
func (f dbForward) Panicf(format string, args ...any)   { f.l.Panicf(format, args...) }

// TestDragonboatLogger: dragonboat's levels map to etcd's (info is debug),
// its SetLevel filters, records carry dragonboat's call site and the
// logger's name, and Panicf logs before it panics.
func TestDragonboatLogger(t *testing.T) {
	log, buf := testLogger(t, slog.LevelDebug)
	dl := &dragonboatLogger{log: log.With(loggerNameKey, "dragonboat.raft"), level: dblogger.INFO}
	f := dbForward{dl}
	f.Infof("campaign %d", 7)
	infoCaller := above(1)
	f.Warningf("slow")
	f.Errorf("broken %s\n", "disk")
	dl.SetLevel(dblogger.ERROR)
	f.Infof("filtered")
	f.Warningf("filtered")
	func() {
		defer func() {
			if r := recover(); r != "invariant 1" {
				t.Errorf("Panicf recovered %v, want its message", r)
			}
		}()
		f.Panicf("invariant %d", 1)
	}()
	want := []map[string]any{
		{"level": "debug", "logger": "dragonboat.raft", "caller": infoCaller, "msg": "campaign 7"},
		{"level": "warn", "msg": "slow"},
		{"level": "error", "msg": "broken disk"},
		{"level": "error", "msg": "invariant 1"},
	}
	got := lines(buf)
	if len(got) != len(want) {
		t.Fatalf("want %d lines, got:\n%s", len(want), buf)
	}
	for i, w := range want {
		var m map[string]any
		if err := json.Unmarshal([]byte(got[i]), &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range w {
			if m[k] != v {
				t.Errorf("line %d: %s = %v, want %v", i, k, m[k], v)
			}
		}
	}

	// A node that logs at info keeps dragonboat at errors; at debug, all.
	if l, _ := testLogger(t, slog.LevelInfo); dragonboatLevel(l) != dblogger.ERROR {
		t.Error("info logger: dragonboat not kept at errors")
	}
	if dragonboatLevel(log) != dblogger.DEBUG {
		t.Error("debug logger: dragonboat not at debug")
	}
}

// TestPebbleLogger: pebble's info lines are debug, its errors error, both
// at pebble's call site.
func TestPebbleLogger(t *testing.T) {
	log, buf := testLogger(t, slog.LevelDebug)
	p := pebbleLogger{log}
	p.Infof("flushed %d", 1)
	caller := above(1)
	p.Errorf("read failed")
	got := lines(buf)
	if len(got) != 2 || !strings.Contains(got[0], `"level":"debug"`) || !strings.Contains(got[0], `"caller":"`+caller+`"`) ||
		!strings.Contains(got[1], `"level":"error"`) {
		t.Fatalf("pebble lines:\n%s", buf)
	}
}

// TestNewLoggerOutputs: files are appended to, each output written once;
// the console format is zap's text; rotation writes its one file; and
// etcd's refusals hold: "default" with another output, rotation without
// exactly one file, an unknown format or a bad rotation config.
func TestNewLoggerOutputs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cairn.log")
	if err := os.WriteFile(file, []byte("earlier\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	log, closeFn, err := NewLogger(LogConfig{Outputs: []string{file, "stdout", file}, Stdout: &stdout})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("to both")
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(file)
	if fl := strings.Split(strings.TrimSpace(string(data)), "\n"); len(fl) != 2 || fl[0] != "earlier" ||
		!strings.Contains(fl[1], `"msg":"to both"`) || strings.Count(stdout.String(), "to both") != 1 {
		t.Fatalf("file:\n%s\nstdout:\n%s", data, stdout.String())
	}

	var stderr bytes.Buffer
	log, _, err = NewLogger(LogConfig{Format: "console", Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	log.Warn("plain", "k", "v")
	if f := strings.Split(strings.TrimSpace(stderr.String()), "\t"); len(f) != 5 || !etcdTS.MatchString(f[0]) ||
		f[1] != "warn" || f[3] != "plain" || f[4] != `{"k": "v"}` {
		t.Fatalf("console line %q", stderr.String())
	}

	rotated := filepath.Join(dir, "rotated.log")
	log, closeFn, err = NewLogger(LogConfig{Outputs: []string{rotated, "stderr"}, Rotate: true,
		RotationJSON: `{"maxsize": 1, "maxbackups": 2}`, Stderr: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("rotating")
	_ = closeFn()
	if data, _ := os.ReadFile(rotated); !strings.Contains(string(data), `"msg":"rotating"`) {
		t.Fatalf("rotated file: %q", data)
	}

	for _, c := range []LogConfig{
		{Outputs: []string{"default", "stdout"}},
		{Rotate: true},
		{Rotate: true, Outputs: []string{file, rotated}},
		{Rotate: true, Outputs: []string{file}, RotationJSON: `{"maxsize": "big"}`},
		{Format: "xml"},
		{Outputs: []string{"systemd/journal"}},
		{Outputs: []string{filepath.Join(dir, "missing", "x.log")}},
	} {
		if _, _, err := NewLogger(c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}
