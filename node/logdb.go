package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	dbconfig "github.com/lni/dragonboat/v4/config"
)

// One raft-log fsync stream per member (issue 25).
//
// Dragonboat keeps its raft log in LogDB.Shards pebble partitions and a
// range writes to partition (shard id % Shards) % ExecShards, each
// partition fsyncing on its own: with the default 16, a member's ranges
// fsync separately in batches a fraction of the size. With one partition,
// the step workers' saves meet in one pebble, whose commit pipeline syncs
// concurrent batches together: one fsync stream for all of a member's
// ranges. The partition count is a hard setting of a data directory
// (dragonboat refuses to start if it changes), so a directory made before
// keeps dragonboat's default; the count a directory uses is recorded next
// to it, in raftLogShardsFile.

const (
	raftLogShardsFile = "cairn-raft-log-shards"
	// legacyRaftLogShards is dragonboat's default, what a data directory
	// made before the record uses.
	legacyRaftLogShards = 16
)

// raftLogDB returns the log-db settings for the raft directory dir: its
// recorded partition count, one for a new directory, dragonboat's default
// for one made before the count was recorded. It records the count.
func raftLogDB(dir string) (dbconfig.LogDBConfig, error) {
	shards, err := raftLogShards(dir)
	if err != nil {
		return dbconfig.LogDBConfig{}, err
	}
	cfg := dbconfig.GetSmallMemLogDBConfig() // 16 MiB × 4 memtables a partition
	if shards == 1 {
		// One partition carries what sixteen did: give it the memtables
		// four of them had, so bursts do not trip LogDB's back-pressure
		// (the memtable size stays, which walsync.go preallocates by).
		cfg.KVMaxWriteBufferNumber = 16
	}
	cfg.Shards = shards
	return cfg, nil
}

func raftLogShards(dir string) (uint64, error) {
	path := filepath.Join(dir, raftLogShardsFile)
	if b, err := os.ReadFile(path); err == nil {
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("node: %s holds %q, not a partition count", path, b)
		}
		return n, nil
	} else if !os.IsNotExist(err) {
		return 0, err
	}
	shards := uint64(1)
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		shards = legacyRaftLogShards // raft data from before the record
	} else if err != nil && !os.IsNotExist(err) {
		return 0, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	if err := writeFileSynced(path, []byte(strconv.FormatUint(shards, 10)+"\n")); err != nil {
		return 0, err
	}
	return shards, nil
}

// writeFileSynced writes path through a temporary file, fsyncs it and its
// directory, so that a crash leaves the old content or the new.
func writeFileSynced(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
