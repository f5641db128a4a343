package compat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/cairn-kv/cairn/node"
)

// gatewayMasked are the JSON fields whose values differ between any two
// clusters (ids, terms, sizes, versions): the scripts show them as "<name>"
// wherever they appear. Revisions are not masked: while Cairn's key space
// is one range its revisions are dense, exactly etcd's.
var gatewayMasked = []string{"cluster_id", "member_id", "raft_term"}

// gatewayModes are the Cairn configurations each script runs against:
// single-group, and sharded mode with the key space still one range.
var gatewayModes = []struct {
	name string
	edit func(*node.Config)
}{
	{"single-group", nil},
	{"sharded", func(c *node.Config) { c.Sharded = true }},
}

// TestGateway runs testdata/gateway/*.txt: each "post" sends its input as
// a JSON body to the path on embedded etcd and on Cairn, and shows Cairn's
// answer (status, then the body with gatewayMasked and the fields named by
// mask= masked, keys sorted); etcd's answer, normalized the same way, must
// be equal, but for the fields named by ignore= (which the script says
// why Cairn sends). Each script starts on fresh servers. With token, the
// request carries as its Authorization header the token that server's
// last answer with a "token" field (/v3/auth/authenticate) gave.
//
//	post path=/v3/kv/put [mask=TTL,hash] [ignore=revision] [token]
//	{"key":"Zm9v","value":"YmFy"}
//	----
//	200 {"header":{...}}
func TestGateway(t *testing.T) {
	for _, mode := range gatewayModes {
		t.Run(mode.name, func(t *testing.T) {
			datadriven.Walk(t, "testdata/gateway", func(t *testing.T, path string) {
				etcd := startEtcd(t, "etcd")
				cairn := startCairnWith(t, "cairn", mode.edit)
				var etcdToken, cairnToken string
				datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
					if d.Cmd != "post" {
						d.Fatalf(t, "unknown command %q", d.Cmd)
					}
					var p, masks, ignores string
					d.ScanArgs(t, "path", &p)
					if d.HasArg("mask") {
						d.ScanArgs(t, "mask", &masks)
					}
					if d.HasArg("ignore") {
						d.ScanArgs(t, "ignore", &ignores)
					}
					mask := slices.Concat(gatewayMasked, strings.Split(masks, ","))
					var ignore []string
					if ignores != "" {
						ignore = strings.Split(ignores, ",")
					}
					var etcdAuth, cairnAuth string
					if d.HasArg("token") {
						etcdAuth, cairnAuth = etcdToken, cairnToken
					}
					etcdStatus, etcdBody := gatewayPostAuth(t, etcd.endpoint, p, d.Input, etcdAuth)
					status, body := gatewayPostAuth(t, cairn.endpoint, p, d.Input, cairnAuth)
					if tok := jsonToken(etcdBody); tok != "" {
						etcdToken = tok
					}
					if tok := jsonToken(body); tok != "" {
						cairnToken = tok
					}
					want := fmt.Sprintf("%d %s", etcdStatus, normalizeJSON(t, etcdBody, mask, ignore))
					if got := fmt.Sprintf("%d %s", status, normalizeJSON(t, body, mask, ignore)); got != want {
						t.Errorf("%s: POST %s %s:\ncairn %s\n etcd %s", d.Pos, p, d.Input, got, want)
					}
					// protobuf's error texts put a space or, chosen per
					// binary (detrand), a no-break space after "proto:".
					return strings.ReplaceAll(fmt.Sprintf("%d %s\n", status, normalizeJSON(t, body, mask, nil)), "\u00a0", " ")
				})
			})
		})
	}
}

// gatewayPost posts body to endpoint+path and returns the answer's status
// and body.
func gatewayPost(t *testing.T, endpoint, path, body string) (int, []byte) {
	t.Helper()
	return gatewayPostAuth(t, endpoint, path, body, "")
}

// gatewayPostAuth is gatewayPost with token as the Authorization header
// ("": none).
func gatewayPostAuth(t *testing.T, endpoint, path, body, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, endpoint+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s%s: %v", endpoint, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s%s: read: %v", endpoint, path, err)
	}
	return resp.StatusCode, b
}

// jsonToken returns the "token" field of the JSON object b, "" if none.
func jsonToken(b []byte) string {
	var v struct {
		Token string `json:"token"`
	}
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	return v.Token
}

// normalizeJSON re-encodes each JSON value in b (one per line for a
// stream) with its keys sorted and the masked fields' values replaced by
// "<field>", and the ignored fields left out.
func normalizeJSON(t *testing.T, b []byte, mask, ignore []string) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out []string
	for {
		var v any
		if err := dec.Decode(&v); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Sprintf("not JSON (%v): %q", err, b)
		}
		maskJSON(v, mask, ignore)
		var n bytes.Buffer
		enc := json.NewEncoder(&n)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.TrimSuffix(n.String(), "\n"))
	}
	return strings.Join(out, "\n")
}

func maskJSON(v any, mask, ignore []string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if slices.Contains(ignore, k) {
				delete(v, k)
				continue
			}
			if slices.Contains(mask, k) {
				v[k] = "<" + k + ">"
				continue
			}
			maskJSON(x, mask, ignore)
		}
	case []any:
		for _, x := range v {
			maskJSON(x, mask, ignore)
		}
	}
}

// TestGatewayWatch: a watch over JSON, as curl sends it (the whole body,
// then the answers as they come): POST /v3/watch with a create_request
// answers "created", and a put on the key then comes as an event, on etcd
// and on Cairn alike.
func TestGatewayWatch(t *testing.T) {
	etcd := startEtcd(t, "etcd")
	cairn := startCairn(t, "cairn")
	var answers []string
	for _, s := range []*server{etcd, cairn} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint+"/v3/watch",
			strings.NewReader(`{"create_request":{"key":"d2F0Y2hlZA=="}}`)) // "watched"
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: POST /v3/watch: %v", s.name, err)
		}
		defer resp.Body.Close()
		lines := bufio.NewReader(resp.Body)
		next := func() string {
			t.Helper()
			l, err := lines.ReadBytes('\n')
			if err != nil {
				t.Fatalf("%s: watch stream: %v (read %q)", s.name, err, l)
			}
			return normalizeJSON(t, l, gatewayMasked, nil)
		}
		created := next()
		if _, err := s.cli.Put(ctx, "watched", "v1"); err != nil {
			t.Fatalf("%s: put: %v", s.name, err)
		}
		answers = append(answers, fmt.Sprintf("%d\n%s\n%s", resp.StatusCode, created, next()))
	}
	if answers[0] != answers[1] {
		t.Fatalf("watch over JSON:\n etcd %s\ncairn %s", answers[0], answers[1])
	}
	if !strings.Contains(answers[1], `"created":true`) || !strings.Contains(answers[1], `"value":"djE="`) {
		t.Fatalf("no created answer and event:\n%s", answers[1])
	}
}
