package node

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	oldvfs "github.com/cockroachdb/pebble/vfs"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"golang.org/x/sys/unix"
)

// The raft log's fsyncs (etcd_disk_wal_fsync_duration_seconds,
// etcd_disk_wal_write_bytes_total).
//
// Dragonboat keeps the raft log in its own LogDB: shards of an older
// pebble (github.com/cockroachdb/pebble, not Cairn's pebble/v2), opened on
// that pebble's package variable vfs.Default, with no way to pass another
// file system (dragonboat refuses any FS but its own outside its tests) or
// to wrap its LogDB factory. TimeRaftLogSyncs therefore replaces
// vfs.Default, once, by a file system that hands pebble's write-ahead log
// files (*.log) of a running node's raft directory out timed.
//
// What pebble loses on those files: its syncing file finds no Fd() on
// them, so it calls their Sync rather than fdatasync(2) on the descriptor
// itself, and no longer preallocates. Sync is fdatasync(2) as before, now
// timed; the file preallocates itself as pebble would (FALLOC_FL_KEEP_SIZE
// in blocks of 110% of the memtable, Cairn's LogDB config's). Pebble's
// sync_file_range pacing (WALBytesPerSync) is not lost: dragonboat leaves
// it 0, i.e. off. Pebble's disk health checks (the DiskSlow events) wrap
// this file system and keep timing every write and sync. Files of no
// node, and every other file, are the old file system's, untouched.

var timeSyncsOnce sync.Once

// TimeRaftLogSyncs makes the raft log's fsyncs and written bytes of every
// node of the process count in its etcd_disk_wal_fsync_duration_seconds and
// etcd_disk_wal_write_bytes_total. It replaces a process-wide variable of
// a dependency: the first call does it and later ones do nothing, and it
// must come before any node starts (a LogDB opened earlier keeps untimed
// files). cmd/cairn calls it before node.Run; tests that read the metric
// call it, and it is never undone.
func TimeRaftLogSyncs() {
	timeSyncsOnce.Do(func() {
		oldvfs.Default = &walTimingFS{FS: oldvfs.Default,
			preallocate: int64(dbconfig.GetSmallMemLogDBConfig().KVWriteBufferSize) * 11 / 10}
	})
}

// walOwners maps the raft directories of the process's running nodes
// (absolute and clean: NodeHostDir, and WALDir when set) to their
// metrics. A node joins before it opens its NodeHost and leaves at Close.
var walOwners sync.Map // string → *metrics

// joinWALOwners records dirs as m's; the func it returns removes them.
func joinWALOwners(m *metrics, dirs ...string) (leave func()) {
	var keys []string
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if abs, err := filepath.Abs(d); err == nil {
			walOwners.Store(abs, m)
			keys = append(keys, abs)
		}
	}
	return func() {
		for _, k := range keys {
			walOwners.CompareAndDelete(k, m)
		}
	}
}

// walOwner returns the metrics of the node whose raft directory holds
// name (the deepest one), nil if none.
func walOwner(name string) *metrics {
	abs, err := filepath.Abs(name)
	if err != nil {
		return nil
	}
	var best string
	var owner *metrics
	walOwners.Range(func(k, v any) bool {
		dir := k.(string)
		if strings.HasPrefix(abs, dir+string(filepath.Separator)) && len(dir) > len(best) {
			best, owner = dir, v.(*metrics)
		}
		return true
	})
	return owner
}

// walTimingFS is old pebble's file system with its write-ahead log files
// in nodes' raft directories timed.
type walTimingFS struct {
	oldvfs.FS
	preallocate int64
}

// Unwrap returns the file system it wraps (old pebble's vfs.Root).
func (fs *walTimingFS) Unwrap() oldvfs.FS { return fs.FS }

func (fs *walTimingFS) Create(name string) (oldvfs.File, error) {
	f, err := fs.FS.Create(name)
	return fs.wrap(name, f, err, 0)
}

// ReuseForWrite opens a recycled log, whose blocks are already allocated
// up to its size.
func (fs *walTimingFS) ReuseForWrite(oldname, newname string) (oldvfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname)
	var size int64
	if err == nil {
		if st, serr := f.Stat(); serr == nil {
			size = st.Size()
		}
	}
	return fs.wrap(newname, f, err, size)
}

func (fs *walTimingFS) wrap(name string, f oldvfs.File, err error, allocated int64) (oldvfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	fd, ok := f.(interface{ Fd() uintptr })
	if !ok {
		return f, nil
	}
	m := walOwner(name)
	if m == nil {
		return f, nil
	}
	return &timedWAL{File: f, fd: int(fd.Fd()), m: m, chunk: fs.preallocate, allocated: allocated}, nil
}

// timedWAL is one write-ahead log file of a node's LogDB. Embedding the
// vfs.File interface hides the *os.File's Fd method (see above). Pebble
// writes and syncs a log from one goroutine at a time (vfs.File's
// contract), so the offsets need no lock.
type timedWAL struct {
	oldvfs.File
	fd                        int
	m                         *metrics
	chunk                     int64 // preallocation block; 0: none
	offset, allocated, blocks int64
}

func (f *timedWAL) Write(p []byte) (int, error) {
	f.preallocateFor(f.offset)
	n, err := f.File.Write(p)
	f.offset += int64(n)
	if n > 0 {
		f.m.walBytes.Add(float64(n))
	}
	return n, err
}

// preallocateFor reserves, as pebble's syncing file does before each
// write, the blocks up to the one holding offset, so that a sync need not
// also allocate them. Failure is ignored, as there: the write allocates.
func (f *timedWAL) preallocateFor(offset int64) {
	if f.chunk <= 0 {
		return
	}
	blocks := (offset + f.chunk - 1) / f.chunk
	if blocks <= f.blocks {
		return
	}
	from := f.blocks * f.chunk
	f.blocks = blocks
	if end := blocks * f.chunk; end > f.allocated {
		_ = unix.Fallocate(f.fd, unix.FALLOC_FL_KEEP_SIZE, from, end-from)
	}
}

// Sync is fdatasync(2), timed in the node's
// etcd_disk_wal_fsync_duration_seconds.
func (f *timedWAL) Sync() error {
	start := time.Now()
	err := unix.Fdatasync(f.fd)
	f.m.walFsyncSec.Observe(time.Since(start).Seconds())
	if err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.name(), Err: err}
	}
	return nil
}

func (f *timedWAL) name() string {
	if st, err := f.File.Stat(); err == nil {
		return st.Name()
	}
	return "raft log"
}
