package shard

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// A journal is a testing aid: every entry a replica applies, appended to a
// file as it is applied, so that a checker can read what the cluster
// persisted as etcd's robustness tests read etcd's WAL. Each record is
//
//	uvarint(raft index) uvarint(len(cmd)) cmd
//
// written after the entry's batch is committed. A replica that restarts
// applies some entries again, so indexes may repeat (with the same
// command); a process killed mid-write may leave a torn last record, which
// ReadJournal ignores.

// appendJournal writes the records of entries to w in one write.
func appendJournal(w io.Writer, indexes []uint64, cmds [][]byte) error {
	var buf []byte
	for i, cmd := range cmds {
		buf = binary.AppendUvarint(buf, indexes[i])
		buf = binary.AppendUvarint(buf, uint64(len(cmd)))
		buf = append(buf, cmd...)
	}
	_, err := w.Write(buf)
	return err
}

// ReadJournal calls fn for every complete record of a journal, in file
// order; the commands are decoded. A torn last record ends the read
// without an error.
func ReadJournal(r io.Reader, fn func(index uint64, cmd *shardpb.Command) error) error {
	br := bufio.NewReader(r)
	for {
		index, err := binary.ReadUvarint(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			return err
		}
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil // torn
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(br, data); err != nil {
			return nil // torn
		}
		var cmd shardpb.Command
		if err := proto.Unmarshal(data, &cmd); err != nil {
			return fmt.Errorf("shard: journal record at index %d: %w", index, err)
		}
		if err := fn(index, &cmd); err != nil {
			return err
		}
	}
}
