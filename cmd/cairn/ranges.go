package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/router"
)

const rangesUsage = `usage: cairn ranges [--endpoints host:port,...] [-w simple|json|table] [--limit N] [--start KEY] [--sort-by id|start|keys|writes|revision]

Print the range map of a sharded cluster as a member sees it (its
/cairn/ranges): for each range, wherever it lives, its id, start and end
keys, generation, leader, replicas (member/replica id), keys, revision,
closed timestamp, writes and watchers.

The simple and table formats start with a summary of the whole map (its
ranges, keys, ranges without a leader, and the ranges each member leads,
the ten leading most) and show at most --limit ranges (100 by default, 0
for all), from the one holding --start, sorted by --sort-by (start key or
id ascending; keys, writes or revision the most first); a last line says
how many more there are. The json format is the member's whole map as an
array unless one of --limit, --start or --sort-by is given: then it is the
page with the summary ({"summary":…,"ranges":[…],"more":N}).`

// rangesSynopsis is the usage line an argument error repeats.
const rangesSynopsis = "usage: cairn ranges [--endpoints host:port,...] [-w simple|json|table] [--limit N] [--start KEY] [--sort-by id|start|keys|writes|revision]"

// rangesDefaultLimit is how many ranges the simple and table formats show
// unless --limit says otherwise.
const rangesDefaultLimit = 100

// rangesHeader names the columns of cairn ranges' table.
var rangesHeader = []string{"RANGE", "START", "END", "GEN", "LEADER", "REPLICAS", "KEYS", "REVISION", "CLOSED", "WRITES", "WATCHERS"}

// rangesCommand runs `cairn ranges`: it prints the range map of a sharded
// cluster as the first endpoint that answers sees it (its /cairn/ranges),
// in etcdctl's output formats (ctl.go). The endpoints after one that
// cannot be reached are tried in turn; one that answers with an error
// ends the command.
func rangesCommand(args, environ []string, stdout io.Writer) error {
	cc := newCtlCommand("cairn ranges", rangesUsage)
	var q router.RangeQuery
	cc.fs.IntVar(&q.Limit, "limit", rangesDefaultLimit, "show at most this many ranges, 0 for all (simple and table; json: all unless given)")
	cc.fs.StringVar(&q.Start, "start", "", "show the ranges from the one holding this key")
	cc.fs.StringVar(&q.Sort, "sort-by", "start", "order of the ranges shown: id, start, keys, writes or revision")
	c, err := cc.parse(args, environ, stdout)
	if errors.Is(err, errCtlHelp) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ranges: %w", err)
	}
	if cc.fs.NArg() > 0 {
		return fmt.Errorf("ranges: unexpected argument %q; %s", cc.fs.Arg(0), rangesSynopsis)
	}
	if q.Limit < 0 {
		return fmt.Errorf("ranges: invalid --limit %d: want a number of ranges, 0 for all", q.Limit)
	}
	if !slices.Contains(router.RangeSorts, q.Sort) {
		return fmt.Errorf("ranges: unsupported --sort-by %q: want one of %s", q.Sort, strings.Join(router.RangeSorts, ", "))
	}
	set := map[string]bool{}
	cc.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	paged := set["limit"] || set["start"] || set["sort-by"]
	if c.writeOut == "json" && !set["limit"] {
		q.Limit = 0 // json keeps every range unless --limit says otherwise
	}
	if c.writeOut == "json" && !paged {
		// The member's whole map, as it always was.
		ranges, _, err := fetchRanges(c, nil)
		if err != nil {
			return fmt.Errorf("ranges: %w", err)
		}
		if ranges == nil {
			ranges = []router.RangeInfo{}
		}
		return printJSON(stdout, ranges)
	}
	ranges, page, err := fetchRanges(c, &q)
	if err != nil {
		return fmt.Errorf("ranges: %w", err)
	}
	if page == nil {
		// A member from before paging answers the whole map.
		p := router.PageRanges(ranges, q)
		page = &p
	}
	if c.writeOut == "json" {
		return printJSON(stdout, page)
	}
	if page.Summary.Ranges == 0 {
		fmt.Fprintln(stdout, "single-group mode: one raft group holds every key")
		return nil
	}
	fmt.Fprintln(stdout, page.Summary)
	rows := make([][]string, len(page.Ranges))
	for i, r := range page.Ranges {
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
	if page.More > 0 {
		fmt.Fprintf(stdout, "… %d more ranges (use --limit 0 or --start)\n", page.More)
	}
	return nil
}

// printJSON prints v as one line of JSON.
func printJSON(stdout io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// fetchRanges gets the range map from the first endpoint that can be
// reached within the dial timeout: with q, the page q asks for, or the
// whole map if the member answers one (a member from before paging).
func fetchRanges(c ctlFlags, q *router.RangeQuery) ([]router.RangeInfo, *router.RangePage, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext:       (&net.Dialer{Timeout: c.dialTimeout}).DialContext,
		DisableKeepAlives: true,
		TLSClientConfig:   c.tls,
	}}
	var errs []error
	for _, ep := range c.endpoints {
		ranges, page, reached, err := getRanges(client, ep, c, q)
		if err == nil {
			return ranges, page, nil
		}
		if reached {
			return nil, nil, err
		}
		errs = append(errs, err)
	}
	return nil, nil, errors.Join(errs...)
}

// getRanges asks one endpoint; reached says whether it answered.
func getRanges(client *http.Client, ep string, c ctlFlags, q *router.RangeQuery) (_ []router.RangeInfo, _ *router.RangePage, reached bool, _ error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.dialTimeout+c.commandTimeout)
	defer cancel()
	u := ep + "/cairn/ranges"
	if q != nil {
		u += "?" + url.Values{"limit": {strconv.Itoa(q.Limit)}, "start": {q.Start}, "sort": {q.Sort}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, false, err
	}
	// With --user, the credentials are checked first, as etcdctl's
	// commands do, and the token goes with the request.
	token, err := c.authenticate(ctx, ep)
	if err != nil {
		return nil, nil, !errors.Is(err, context.DeadlineExceeded) && status.Code(errors.Unwrap(err)) != codes.Unavailable, err
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		return nil, nil, !errors.As(err, &op) || op.Op != "dial", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		if m := strings.TrimSpace(string(msg)); m != "" {
			return nil, nil, true, fmt.Errorf("%s answered %s: %s", ep, resp.Status, m)
		}
		return nil, nil, true, fmt.Errorf("%s answered %s", ep, resp.Status)
	}
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return nil, nil, true, fmt.Errorf("%s: %w", ep, err)
	}
	if q != nil && bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		var page router.RangePage
		if err := json.Unmarshal(raw, &page); err != nil {
			return nil, nil, true, fmt.Errorf("%s: %w", ep, err)
		}
		return nil, &page, true, nil
	}
	var ranges []router.RangeInfo
	if err := json.Unmarshal(raw, &ranges); err != nil {
		return nil, nil, true, fmt.Errorf("%s: %w", ep, err)
	}
	return ranges, nil, true, nil
}
