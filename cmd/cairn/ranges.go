package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/router"
)

const rangesUsage = `usage: cairn ranges [--endpoints host:port,...] [-w simple|json|table]

Print the range map of a sharded cluster as a member sees it (its
/cairn/ranges): for each range, wherever it lives, its id, start and end
keys, generation, leader, replicas (member/replica id), keys, revision,
closed timestamp, writes and watchers.`

// rangesHeader names the columns of cairn ranges' table.
var rangesHeader = []string{"RANGE", "START", "END", "GEN", "LEADER", "REPLICAS", "KEYS", "REVISION", "CLOSED", "WRITES", "WATCHERS"}

// rangesCommand runs `cairn ranges`: it prints the range map of a sharded
// cluster as the first endpoint that answers sees it (its /cairn/ranges),
// in etcdctl's output formats (ctl.go). The endpoints after one that
// cannot be reached are tried in turn; one that answers with an error
// ends the command.
func rangesCommand(args, environ []string, stdout io.Writer) error {
	cc := newCtlCommand("cairn ranges", rangesUsage)
	c, err := cc.parse(args, environ, stdout)
	if errors.Is(err, errCtlHelp) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ranges: %w", err)
	}
	if cc.fs.NArg() > 0 {
		return fmt.Errorf("ranges: unexpected argument %q; usage: cairn ranges [--endpoints host:port,...] [-w simple|json|table]", cc.fs.Arg(0))
	}
	ranges, err := fetchRanges(c)
	if err != nil {
		return fmt.Errorf("ranges: %w", err)
	}
	if c.writeOut == "json" {
		if ranges == nil {
			ranges = []router.RangeInfo{}
		}
		b, err := json.Marshal(ranges)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	if len(ranges) == 0 {
		fmt.Fprintln(stdout, "single-group mode: one raft group holds every key")
		return nil
	}
	rows := make([][]string, len(ranges))
	for i, r := range ranges {
		end := "∞"
		if r.End != "" {
			end = strconv.Quote(r.End)
		}
		leader := "none"
		if r.Leader != 0 {
			leader = fmt.Sprintf("%x", r.Leader)
		}
		reps := make([]string, len(r.Replicas))
		for j, id := range r.Replicas {
			reps[j] = fmt.Sprintf("%x", id)
		}
		// Members that name replica ids: member/id, learners marked.
		if len(r.ReplicaSet) > 0 {
			reps = make([]string, len(r.ReplicaSet))
			for j, rep := range r.ReplicaSet {
				reps[j] = fmt.Sprintf("%x/%d", rep.Member, rep.ID)
				if rep.Learner {
					reps[j] += "(learner)"
				}
			}
		}
		rows[i] = []string{fmt.Sprint(r.ID), strconv.Quote(r.Start), end, fmt.Sprint(r.Generation), leader,
			strings.Join(reps, ","), fmt.Sprint(r.Keys), fmt.Sprint(r.Revision), fmt.Sprint(r.Closed),
			fmt.Sprint(r.Writes), fmt.Sprint(r.Watchers)}
	}
	if c.writeOut == "table" {
		printTable(stdout, rangesHeader, rows)
	} else {
		printSimple(stdout, rows)
	}
	return nil
}

// fetchRanges gets the range map from the first endpoint that can be
// reached within the dial timeout.
func fetchRanges(c ctlFlags) ([]router.RangeInfo, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext:       (&net.Dialer{Timeout: c.dialTimeout}).DialContext,
		DisableKeepAlives: true,
		TLSClientConfig:   c.tls,
	}}
	var errs []error
	for _, ep := range c.endpoints {
		ranges, reached, err := getRanges(client, ep, c)
		if err == nil {
			return ranges, nil
		}
		if reached {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// getRanges asks one endpoint; reached says whether it answered.
func getRanges(client *http.Client, ep string, c ctlFlags) (_ []router.RangeInfo, reached bool, _ error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.dialTimeout+c.commandTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep+"/cairn/ranges", nil)
	if err != nil {
		return nil, false, err
	}
	// With --user, the credentials are checked first, as etcdctl's
	// commands do, and the token goes with the request.
	token, err := c.authenticate(ctx, ep)
	if err != nil {
		return nil, !errors.Is(err, context.DeadlineExceeded) && status.Code(errors.Unwrap(err)) != codes.Unavailable, err
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		return nil, !errors.As(err, &op) || op.Op != "dial", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, true, fmt.Errorf("%s answered %s", ep, resp.Status)
	}
	var ranges []router.RangeInfo
	if err := json.NewDecoder(resp.Body).Decode(&ranges); err != nil {
		return nil, true, fmt.Errorf("%s: %w", ep, err)
	}
	return ranges, true, nil
}
