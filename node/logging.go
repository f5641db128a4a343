package node

// Logs as etcd writes them. Cairn's packages log through *slog.Logger;
// NewLogger gives that logger a handler over a zap core built from etcd's
// own zap configuration (logutil.DefaultZapLoggerConfig): the same keys in
// the same order (level, ts, logger, caller, msg, then the fields), the
// same time layout (2006-01-02T15:04:05.000000Z0700), lower-case levels, a
// short caller and the same sampling (per message and level, the first
// 100 a second and every 100th after). Log shippers and alerts written for
// etcd's lines read Cairn's.
//
// Dragonboat and pebble log through their own interfaces. RouteDragonboatLogs
// sends dragonboat's to a slog.Logger (process-wide, once), and the node
// gives pebble a pebbleLogger over its own logger.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	dblogger "github.com/lni/dragonboat/v4/logger"
	"github.com/lni/dragonboat/v4/raftio"
	"go.etcd.io/etcd/client/pkg/v3/logutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"gopkg.in/natefinch/lumberjack.v2"
)

// LogConfig is how a node's logger writes: etcd's --log-level,
// --log-format, --log-outputs, --enable-log-rotation and
// --log-rotation-config-json.
type LogConfig struct {
	// Level is the least severe level written.
	Level slog.Level
	// Format is "json" (the default) or "console" (zap's tab-separated
	// text).
	Format string
	// Outputs are where lines go: "default" (stderr, as etcd outside
	// systemd), "stderr", "stdout" or file paths, appended to. None is
	// "default"; "default" may not be given with another output, as in
	// etcd. etcd's "systemd/journal" is not supported.
	Outputs []string
	// Rotate rotates the one file output with lumberjack, configured by
	// RotationJSON (lumberjack's JSON keys: maxsize in MB, maxage in days,
	// maxbackups, localtime, compress; etcd's default
	// DefaultLogRotationJSON when empty). It needs exactly one file output.
	Rotate       bool
	RotationJSON string
	// Stderr and Stdout are what "stderr" and "stdout" mean; nil is the
	// process's. Tests capture them.
	Stderr, Stdout io.Writer
}

// DefaultLogRotationJSON is etcd's default --log-rotation-config-json:
// files of 100 MB, kept forever, named in UTC, not compressed.
const DefaultLogRotationJSON = `{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}`

// NewLogger returns a logger writing etcd's lines as c says, and a close
// that flushes and closes the files it opened. Bad settings are errors
// with etcd's meaning (an unknown format, "default" with other outputs,
// rotation without exactly one file).
func NewLogger(c LogConfig) (*slog.Logger, func() error, error) {
	encoding, err := logutil.ConvertToZapFormat(c.Format)
	if err != nil {
		return nil, nil, err
	}
	outputs := c.Outputs
	if len(outputs) == 0 {
		outputs = []string{"default"}
	}
	if len(outputs) > 1 && slices.Contains(outputs, "default") {
		return nil, nil, fmt.Errorf("node: log outputs %q: \"default\" cannot be combined with other outputs", outputs)
	}
	stderr, stdout := c.Stderr, c.Stdout
	if stderr == nil {
		stderr = os.Stderr
	}
	if stdout == nil {
		stdout = os.Stdout
	}
	var files []string
	for _, o := range outputs {
		switch o {
		case "default", "stderr", "stdout":
		case "systemd/journal":
			return nil, nil, errors.New("node: log output systemd/journal is not supported; use stderr and let systemd collect it")
		case "":
			return nil, nil, errors.New("node: empty log output")
		default:
			files = append(files, o)
		}
	}
	if c.Rotate && len(files) != 1 {
		return nil, nil, fmt.Errorf("node: log rotation needs exactly one file among the log outputs %q", outputs)
	}

	var (
		syncers []zapcore.WriteSyncer
		closers []io.Closer
		seen    = map[string]bool{}
	)
	closeAll := func() error {
		var errs []error
		for _, cl := range closers {
			errs = append(errs, cl.Close())
		}
		return errors.Join(errs...)
	}
	for _, o := range outputs {
		if seen[o] {
			continue // each output once, as etcd merges them
		}
		seen[o] = true
		switch {
		case o == "default" || o == "stderr":
			syncers = append(syncers, zapcore.Lock(zapcore.AddSync(stderr)))
		case o == "stdout":
			syncers = append(syncers, zapcore.Lock(zapcore.AddSync(stdout)))
		case c.Rotate:
			lj := &lumberjack.Logger{}
			rot := c.RotationJSON
			if rot == "" {
				rot = DefaultLogRotationJSON
			}
			if err := json.Unmarshal([]byte(rot), lj); err != nil {
				return nil, nil, fmt.Errorf("node: log rotation config %q: %w", rot, err)
			}
			lj.Filename = o
			syncers = append(syncers, zapcore.Lock(zapcore.AddSync(lj)))
			closers = append(closers, lj)
		default:
			// Appended to and created as etcd's zap file sink does.
			f, err := os.OpenFile(o, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
			if err != nil {
				_ = closeAll()
				return nil, nil, fmt.Errorf("node: log output: %w", err)
			}
			syncers = append(syncers, zapcore.Lock(f))
			closers = append(closers, f)
		}
	}

	ecfg := logutil.DefaultZapLoggerConfig.EncoderConfig
	var enc zapcore.Encoder
	if encoding == logutil.ConsoleLogFormat {
		enc = zapcore.NewConsoleEncoder(ecfg)
	} else {
		enc = zapcore.NewJSONEncoder(ecfg)
	}
	ws := zapcore.NewMultiWriteSyncer(syncers...)
	core := zapcore.NewCore(enc, ws, zapLevel(c.Level))
	if s := logutil.DefaultZapLoggerConfig.Sampling; s != nil {
		core = zapcore.NewSamplerWithOptions(core, time.Second, s.Initial, s.Thereafter)
	}
	closeFn := func() error {
		_ = ws.Sync() // stderr and pipes cannot be synced; that is not a failure
		return closeAll()
	}
	return slog.New(newZapHandler(core)), closeFn, nil
}

// zapLevel is the zap level a slog level is written at: slog's levels
// between zap's round down.
func zapLevel(l slog.Level) zapcore.Level {
	switch {
	case l < slog.LevelInfo:
		return zapcore.DebugLevel
	case l < slog.LevelWarn:
		return zapcore.InfoLevel
	case l < slog.LevelError:
		return zapcore.WarnLevel
	}
	return zapcore.ErrorLevel
}

// loggerNameKey is the attribute that names a logger, as zap's named
// loggers (etcd's "raft"): given to With outside any group it becomes the
// line's "logger" key, placed before the caller, instead of a field.
const loggerNameKey = "logger"

// zapHandler is a slog.Handler writing to a zap core.
//
//   - The caller is the record's PC (slog's call site), short as etcd's.
//   - Attributes become zap fields of the same kinds; errors are written
//     as their message, durations as strings ("1.5s") and times in etcd's
//     layout, as etcd's zap config encodes them.
//   - A group becomes a zap namespace (a nested object) once it holds an
//     attribute; an empty group is left out, as slog asks.
type zapHandler struct {
	core zapcore.Core // With the attributes so far
	name string       // the logger's name, "" for none
	// pending are the groups opened since the last attributes; they
	// become namespaces when attributes arrive.
	pending []string
	// grouped is set once core has a namespace open.
	grouped bool
}

func newZapHandler(core zapcore.Core) *zapHandler { return &zapHandler{core: core} }

// Enabled reports whether the core writes level.
func (h *zapHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.core.Enabled(zapLevel(l))
}

// Handle writes r, unless the core (its level or its sampler) drops it.
func (h *zapHandler) Handle(_ context.Context, r slog.Record) error {
	ent := zapcore.Entry{Level: zapLevel(r.Level), Time: r.Time, LoggerName: h.name, Message: r.Message}
	if r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		ent.Caller = zapcore.NewEntryCaller(f.PC, f.File, f.Line, f.File != "")
	}
	ce := h.core.Check(ent, nil)
	if ce == nil {
		return nil
	}
	var fields []zapcore.Field
	if r.NumAttrs() > 0 {
		fields = make([]zapcore.Field, 0, len(h.pending)+r.NumAttrs())
		n := len(fields)
		r.Attrs(func(a slog.Attr) bool {
			fields = appendField(fields, a)
			return true
		})
		if len(fields) > n && len(h.pending) > 0 {
			fields = append(namespaces(h.pending), fields...)
		}
	}
	ce.Write(fields...)
	return nil
}

// WithAttrs returns a handler whose lines carry attrs.
func (h *zapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	var fields []zapcore.Field
	for _, a := range attrs {
		if a.Key == loggerNameKey && len(h.pending) == 0 && !h.grouped {
			if v := a.Value.Resolve(); v.Kind() == slog.KindString {
				if c.name != "" {
					c.name += "."
				}
				c.name += v.String()
				continue
			}
		}
		fields = appendField(fields, a)
	}
	if len(fields) == 0 {
		return &c
	}
	c.core = h.core.With(append(namespaces(h.pending), fields...))
	c.grouped = c.grouped || len(h.pending) > 0
	c.pending = nil
	return &c
}

// WithGroup returns a handler whose later attributes are under name.
func (h *zapHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.pending = append(slices.Clip(h.pending), name)
	return &c
}

func namespaces(groups []string) []zapcore.Field {
	fs := make([]zapcore.Field, len(groups))
	for i, g := range groups {
		fs[i] = zap.Namespace(g)
	}
	return fs
}

// appendField appends a as zap fields: none for an empty attribute or an
// empty group, a group without a key inline.
func appendField(fs []zapcore.Field, a slog.Attr) []zapcore.Field {
	v := a.Value.Resolve()
	if a.Key == "" && v.Kind() != slog.KindGroup {
		return fs // slog's empty attribute
	}
	switch v.Kind() {
	case slog.KindString:
		return append(fs, zap.String(a.Key, v.String()))
	case slog.KindInt64:
		return append(fs, zap.Int64(a.Key, v.Int64()))
	case slog.KindUint64:
		return append(fs, zap.Uint64(a.Key, v.Uint64()))
	case slog.KindFloat64:
		return append(fs, zap.Float64(a.Key, v.Float64()))
	case slog.KindBool:
		return append(fs, zap.Bool(a.Key, v.Bool()))
	case slog.KindDuration:
		return append(fs, zap.Duration(a.Key, v.Duration()))
	case slog.KindTime:
		return append(fs, zap.Time(a.Key, v.Time()))
	case slog.KindGroup:
		attrs := v.Group()
		if a.Key == "" {
			for _, g := range attrs {
				fs = appendField(fs, g)
			}
			return fs
		}
		var inner []zapcore.Field
		for _, g := range attrs {
			inner = appendField(inner, g)
		}
		if len(inner) == 0 {
			return fs
		}
		return append(fs, zap.Object(a.Key, fieldsObject(inner)))
	}
	if err, ok := v.Any().(error); ok {
		return append(fs, zap.String(a.Key, err.Error()))
	}
	return append(fs, zap.Any(a.Key, v.Any()))
}

// fieldsObject writes a group's fields as one JSON object.
type fieldsObject []zapcore.Field

func (o fieldsObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for _, f := range o {
		f.AddTo(enc)
	}
	return nil
}

var routeOnce sync.Once

// RouteDragonboatLogs sends dragonboat's logs to log, as records at
// dragonboat's call sites with logger "dragonboat.<package>". Dragonboat's
// loggers are process-wide: the first call wins and later ones do
// nothing, and it must come before anything in the process logs through
// dragonboat or sets a dragonboat log level (node.Start does), or those
// packages keep dragonboat's default text logger. cmd/cairn calls it
// before node.Run; tests that start nodes leave dragonboat's default.
//
// Levels: Debugf and Infof (per-range chatter: a thousand ranges start,
// campaign and snapshot) are debug, Warningf warn, Errorf error, Panicf
// error and then a panic. Which of them are called at all is the node's
// choice (dragonboatLevel).
func RouteDragonboatLogs(log *slog.Logger) {
	routeOnce.Do(func() {
		dblogger.SetLoggerFactory(func(pkg string) dblogger.ILogger {
			return &dragonboatLogger{log: log.With(loggerNameKey, "dragonboat."+pkg), level: dblogger.INFO}
		})
	})
}

// dragonboatLogger is one dragonboat package's logger over slog.
type dragonboatLogger struct {
	log *slog.Logger
	mu  sync.Mutex
	// level is dragonboat's level for the package (SetLevel).
	level dblogger.LogLevel
}

func (l *dragonboatLogger) SetLevel(level dblogger.LogLevel) {
	l.mu.Lock()
	l.level = level
	l.mu.Unlock()
}

func (l *dragonboatLogger) enabled(level dblogger.LogLevel) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return level <= l.level
}

func (l *dragonboatLogger) Debugf(format string, args ...any) {
	l.logf(dblogger.DEBUG, slog.LevelDebug, format, args)
}
func (l *dragonboatLogger) Infof(format string, args ...any) {
	l.logf(dblogger.INFO, slog.LevelDebug, format, args)
}
func (l *dragonboatLogger) Warningf(format string, args ...any) {
	l.logf(dblogger.WARNING, slog.LevelWarn, format, args)
}
func (l *dragonboatLogger) Errorf(format string, args ...any) {
	l.logf(dblogger.ERROR, slog.LevelError, format, args)
}
func (l *dragonboatLogger) Panicf(format string, args ...any) {
	l.logf(dblogger.CRITICAL, slog.LevelError, format, args)
	panic(fmt.Sprintf(format, args...))
}

// logf logs at dragonboat's call site: above logAt are logf, this type's
// method and dragonboat's package logger that forwards to it.
func (l *dragonboatLogger) logf(dl dblogger.LogLevel, sl slog.Level, format string, args []any) {
	if !l.enabled(dl) || !l.log.Enabled(context.Background(), sl) {
		return
	}
	logAt(l.log, 5, sl, format, args)
}

// logAt logs a formatted message at the caller skip frames above it
// (counting runtime.Callers and logAt itself).
func logAt(log *slog.Logger, skip int, level slog.Level, format string, args []any) {
	var pcs [1]uintptr
	runtime.Callers(skip, pcs[:])
	r := slog.NewRecord(time.Now(), level, strings.TrimSuffix(fmt.Sprintf(format, args...), "\n"), pcs[0])
	_ = log.Handler().Handle(context.Background(), r)
}

// dragonboatLevel is the level the node sets dragonboat's packages to for
// a node logging to log: everything when log writes debug lines, else
// errors only (dragonboat's warnings and info are per-range chatter that
// Cairn reports itself where it matters, as leader changes).
func dragonboatLevel(log *slog.Logger) dblogger.LogLevel {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return dblogger.DEBUG
	}
	return dblogger.ERROR
}

// pebbleLogger is pebble's logger over the node's: pebble's info lines
// (flushes, compactions, WAL recycling) are debug, its errors error, and
// a fatal error is logged and ends the process, as pebble's own logger
// does.
type pebbleLogger struct{ log *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.log.Enabled(context.Background(), slog.LevelDebug) {
		logAt(p.log, 3, slog.LevelDebug, format, args)
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	logAt(p.log, 3, slog.LevelError, format, args)
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	logAt(p.log, 3, slog.LevelError, format, args)
	os.Exit(1)
}

// logLeader logs a leader change as etcd's raft node reports its own:
// range 1's at info, "elected leader", or "lost leader" when a leader it
// knew is gone (dragonboat also reports "no leader" at each new term while
// a campaign runs; those are debug); the other ranges' at debug, since a
// member may lead thousands of them.
func (n *Node) logLeader(info raftio.LeaderInfo) {
	level := slog.LevelDebug
	if info.ShardID == singleShardID {
		if prev := n.firstLeader.Swap(info.LeaderID); prev != info.LeaderID && (info.LeaderID != 0 || prev != 0) {
			level = slog.LevelInfo
		}
	}
	if !n.log.Enabled(context.Background(), level) {
		return
	}
	// Replicas are named by their members, as etcd names its raft nodes.
	local := n.memberOf(info.ShardID, info.ReplicaID)
	if info.LeaderID == 0 {
		n.log.Log(context.Background(), level, "lost leader", "local-member-id", fmt.Sprintf("%x", local),
			"term", info.Term, "range", info.ShardID)
		return
	}
	n.log.Log(context.Background(), level, "elected leader", "local-member-id", fmt.Sprintf("%x", local),
		"leader", fmt.Sprintf("%x", n.memberOf(info.ShardID, info.LeaderID)), "term", info.Term, "range", info.ShardID)
}
