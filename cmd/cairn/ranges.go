package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cairn-kv/cairn/router"
)

// rangesCommand runs `cairn ranges [--endpoint URL]`: it prints the range
// map of a sharded cluster as the member at the endpoint sees it (its
// /cairn/ranges), a range per line.
func rangesCommand(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("cairn ranges", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoint := fs.String("endpoint", "http://127.0.0.1:2379", "client URL of a member")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return fmt.Errorf("usage: cairn ranges [--endpoint http://host:port]")
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(strings.TrimSuffix(*endpoint, "/") + "/cairn/ranges")
	if err != nil {
		return fmt.Errorf("ranges: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ranges: %s answered %s", *endpoint, resp.Status)
	}
	var ranges []router.RangeInfo
	if err := json.NewDecoder(resp.Body).Decode(&ranges); err != nil {
		return fmt.Errorf("ranges: %w", err)
	}
	if len(ranges) == 0 {
		fmt.Fprintln(stdout, "single-group mode: one raft group holds every key")
		return nil
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "RANGE\tSTART\tEND\tGEN\tLEADER\tREPLICAS\tKEYS\tREVISION\tCLOSED\tWRITES\tWATCHERS")
	for _, r := range ranges {
		end := "∞"
		if r.End != "" {
			end = fmt.Sprintf("%q", r.End)
		}
		leader := "none"
		if r.Leader != 0 {
			leader = fmt.Sprintf("%x", r.Leader)
		}
		reps := make([]string, len(r.Replicas))
		for i, id := range r.Replicas {
			reps[i] = fmt.Sprintf("%x", id)
		}
		fmt.Fprintf(w, "%d\t%q\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", r.ID, r.Start, end, r.Generation, leader,
			strings.Join(reps, ","), r.Keys, r.Revision, r.Closed, r.Writes, r.Watchers)
	}
	return w.Flush()
}
