package compat

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// jsonStream is one streaming call over the JSON gateway: its answer's
// status and its lines as they come.
type jsonStream struct {
	t      *testing.T
	name   string
	status int
	lines  *bufio.Reader
}

// postStream posts body to s's path and returns the stream of its answer,
// closed (with the request's context) when the test ends.
func postStream(t *testing.T, s *server, path, body string) *jsonStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: POST %s: %v", s.name, path, err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return &jsonStream{t: t, name: s.name, status: resp.StatusCode, lines: bufio.NewReader(resp.Body)}
}

// next reads the stream's next line, normalized with mask masked.
func (st *jsonStream) next(mask ...string) string {
	st.t.Helper()
	l, err := st.lines.ReadBytes('\n')
	if err != nil {
		st.t.Fatalf("%s: stream: %v (read %q)", st.name, err, l)
	}
	return normalizeJSON(st.t, l, append(mask, gatewayMasked...), nil)
}

// events reads lines until n events came, and returns them one per line
// (normalized, with mask masked): how a catching-up watch batches its
// events into responses is not compared, only the events and their order.
func (st *jsonStream) events(n int, mask ...string) string {
	st.t.Helper()
	var out []string
	for len(out) < n {
		l, err := st.lines.ReadBytes('\n')
		if err != nil {
			st.t.Fatalf("%s: stream: %v (read %q, after %d events)", st.name, err, l, len(out))
		}
		var msg struct {
			Result struct {
				Events []json.RawMessage `json:"events"`
			} `json:"result"`
		}
		if err := json.Unmarshal(l, &msg); err != nil {
			st.t.Fatalf("%s: stream line %q: %v", st.name, l, err)
		}
		for _, ev := range msg.Result.Events {
			out = append(out, normalizeJSON(st.t, ev, append(mask, gatewayMasked...), nil))
		}
	}
	return strings.Join(out, "\n")
}

// gatewayPut puts key=value on s through the JSON gateway and returns the
// revision of the put.
func gatewayPut(t *testing.T, s *server, path, body string) int64 {
	t.Helper()
	status, b := gatewayPost(t, s.endpoint, path, body)
	var resp struct {
		Header struct {
			Revision int64 `json:"revision,string"`
		} `json:"header"`
	}
	if err := json.Unmarshal(b, &resp); status != http.StatusOK || err != nil {
		t.Fatalf("%s: POST %s %s: %d %s (%v)", s.name, path, body, status, b, err)
	}
	return resp.Header.Revision
}

// TestGatewayWatchSharded: a watch over JSON on a sharded Cairn whose
// key space is four ranges (split at c, k and t) answers as etcd's does:
// a watch of [a, z) with prev_kv hears puts and a delete landing in three
// ranges, one response per write, in order; a second watch from the first
// put's revision replays the same events. Revisions are compared as they
// are: the writes go one at a time, so Cairn's are etcd's.
func TestGatewayWatchSharded(t *testing.T) {
	etcd := startEtcd(t, "etcd")
	cairn := startShardedCairn(t, "cairn-sharded", []string{"c", "k", "t"})
	writes := []struct{ path, body string }{
		{"/v3/kv/put", `{"key":"Yg==","value":"djE="}`}, // b=v1, range [, c)
		{"/v3/kv/put", `{"key":"bQ==","value":"djI="}`}, // m=v2, range [k, t)
		{"/v3/kv/put", `{"key":"eA==","value":"djM="}`}, // x=v3, range [t, )
		{"/v3/kv/put", `{"key":"bQ==","value":"djQ="}`}, // m=v4
		{"/v3/kv/deleterange", `{"key":"Yg=="}`},        // b
		{"/v3/kv/put", `{"key":"ZA==","value":"djU="}`}, // d=v5, range [c, k)
	}
	const watch = `{"create_request":{"key":"YQ==","range_end":"eg==","prev_kv":true}}` // [a, z)
	var answers []string
	for _, s := range []*server{etcd, cairn} {
		var out []string
		live := postStream(t, s, "/v3/watch", watch)
		out = append(out, fmt.Sprint(live.status), live.next("watch_id"))
		var first int64
		for i, w := range writes {
			rev := gatewayPut(t, s, w.path, w.body)
			if i == 0 {
				first = rev
			}
			out = append(out, live.next("watch_id"))
		}
		past := postStream(t, s, "/v3/watch",
			fmt.Sprintf(`{"create_request":{"key":"YQ==","range_end":"eg==","start_revision":%d}}`, first))
		out = append(out, fmt.Sprint(past.status), past.next("watch_id"), past.events(len(writes)))
		answers = append(answers, strings.Join(out, "\n"))
	}
	if answers[0] != answers[1] {
		t.Fatalf("watch over JSON across ranges:\n--- etcd\n%s\n--- cairn\n%s", answers[0], answers[1])
	}
	if !strings.Contains(answers[1], `"type":"DELETE"`) || !strings.Contains(answers[1], `"prev_kv"`) {
		t.Fatalf("no delete event or prev_kv:\n%s", answers[1])
	}
}

// TestGatewayObserve: Election's Observe over JSON streams the leader as
// etcd's gateway does: the current leader's key-value first, then each
// proclaimed value, one {"result":…} line each, in single-group and
// sharded mode (the election's keys in a range other than the first).
func TestGatewayObserve(t *testing.T) {
	for _, mode := range []struct {
		name  string
		start func(t *testing.T) *server
	}{
		{"single-group", func(t *testing.T) *server { return startCairn(t, "cairn") }},
		{"sharded", func(t *testing.T) *server { return startShardedCairn(t, "cairn-sharded", []string{"c", "k"}) }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			etcd := startEtcd(t, "etcd")
			cairn := mode.start(t)
			var answers []string
			for _, s := range []*server{etcd, cairn} {
				var out []string
				post := func(path, body string) {
					status, b := gatewayPost(t, s.endpoint, path, body)
					out = append(out, fmt.Sprintf("%s %d %s", path, status, normalizeJSON(t, b, gatewayMasked, nil)))
				}
				post("/v3/lease/grant", `{"TTL":60,"ID":2000}`)
				// Election "el" (keys el/7d0), value v1.
				post("/v3/election/campaign", `{"name":"ZWw=","lease":2000,"value":"djE="}`)
				obs := postStream(t, s, "/v3/election/observe", `{"name":"ZWw="}`)
				out = append(out, fmt.Sprint(obs.status), obs.next())
				post("/v3/election/proclaim", `{"leader":{"name":"ZWw=","key":"ZWwvN2Qw","rev":"2","lease":2000},"value":"djI="}`)
				out = append(out, obs.next())
				post("/v3/election/proclaim", `{"leader":{"name":"ZWw=","key":"ZWwvN2Qw","rev":"2","lease":2000},"value":"djM="}`)
				out = append(out, obs.next())
				answers = append(answers, strings.Join(out, "\n"))
			}
			if answers[0] != answers[1] {
				t.Fatalf("observe over JSON:\n--- etcd\n%s\n--- cairn\n%s", answers[0], answers[1])
			}
			if !strings.Contains(answers[1], `"value":"djM="`) {
				t.Fatalf("the last proclaimed value was not observed:\n%s", answers[1])
			}
		})
	}
}

// TestGatewayWebsocketWatch: /v3/watch opened as a websocket (as a browser
// opens one: a GET asking to upgrade) is served as etcd's gateway serves it,
// in single-group and sharded mode (four ranges): each message the client
// sends is one request of the watch stream, each response comes back as
// one text message, {"result":…}. A watch of [a, z) with prev_kv hears
// puts and a delete in three ranges, one message per write; a second watch
// created on the same socket from the first put's revision replays them;
// cancelling the first answers "canceled". The messages are compared with
// etcd's, watch IDs included.
func TestGatewayWebsocketWatch(t *testing.T) {
	for _, mode := range []struct {
		name  string
		start func(t *testing.T) *server
	}{
		{"single-group", func(t *testing.T) *server { return startCairn(t, "cairn") }},
		{"sharded", func(t *testing.T) *server { return startShardedCairn(t, "cairn-sharded", []string{"c", "k", "t"}) }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			etcd := startEtcd(t, "etcd")
			cairn := mode.start(t)
			writes := []struct{ path, body string }{
				{"/v3/kv/put", `{"key":"Yg==","value":"djE="}`}, // b=v1, range [, c)
				{"/v3/kv/put", `{"key":"bQ==","value":"djI="}`}, // m=v2, range [k, t)
				{"/v3/kv/put", `{"key":"eA==","value":"djM="}`}, // x=v3, range [t, )
				{"/v3/kv/deleterange", `{"key":"Yg=="}`},        // b
			}
			var answers []string
			for _, s := range []*server{etcd, cairn} {
				ws := dialWebsocket(t, s, "/v3/watch")
				ws.send(`{"create_request":{"key":"YQ==","range_end":"eg==","prev_kv":true}}`) // [a, z)
				out := []string{ws.next()}
				var first int64
				for i, w := range writes {
					rev := gatewayPut(t, s, w.path, w.body)
					if i == 0 {
						first = rev
					}
					out = append(out, ws.next())
				}
				ws.send(fmt.Sprintf(`{"create_request":{"key":"YQ==","range_end":"eg==","start_revision":%d}}`, first))
				out = append(out, ws.next())
				// The replay: how a catching-up watch batches its events is
				// not compared (as TestGatewayWatchSharded), only the events.
				var replayed []string
				for len(replayed) < len(writes) {
					var msg struct {
						Result struct {
							Events []json.RawMessage `json:"events"`
						} `json:"result"`
					}
					b := ws.read()
					if err := json.Unmarshal(b, &msg); err != nil {
						t.Fatalf("%s: websocket message %q: %v", s.name, b, err)
					}
					for _, ev := range msg.Result.Events {
						replayed = append(replayed, normalizeJSON(t, ev, gatewayMasked, nil))
					}
				}
				out = append(out, replayed...)
				ws.send(`{"cancel_request":{"watch_id":0}}`)
				out = append(out, ws.next())
				answers = append(answers, strings.Join(out, "\n"))
			}
			if answers[0] != answers[1] {
				t.Fatalf("watch over a websocket:\n--- etcd\n%s\n--- cairn\n%s", answers[0], answers[1])
			}
			for _, want := range []string{`"created":true`, `"type":"DELETE"`, `"prev_kv"`, `"canceled":true`} {
				if !strings.Contains(answers[1], want) {
					t.Fatalf("no %s in the answers:\n%s", want, answers[1])
				}
			}
		})
	}
}

// wsStream is one streaming call over the JSON gateway's websocket.
type wsStream struct {
	t    *testing.T
	name string
	conn *websocket.Conn
}

// dialWebsocket opens path on s as a websocket, closed when the test ends;
// every read waits at most 30 seconds.
func dialWebsocket(t *testing.T, s *server, path string) *wsStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(s.endpoint, "http")+path, nil)
	if err != nil {
		t.Fatalf("%s: websocket %s: %v (%v)", s.name, path, err, resp)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &wsStream{t: t, name: s.name, conn: conn}
}

// send sends msg as one text message.
func (ws *wsStream) send(msg string) {
	ws.t.Helper()
	if err := ws.conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		ws.t.Fatalf("%s: websocket send %s: %v", ws.name, msg, err)
	}
}

// read returns the next message, which must be a text message.
func (ws *wsStream) read() []byte {
	ws.t.Helper()
	if err := ws.conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		ws.t.Fatal(err)
	}
	kind, b, err := ws.conn.ReadMessage()
	if err != nil || kind != websocket.TextMessage {
		ws.t.Fatalf("%s: websocket read: %d %q %v, want a text message", ws.name, kind, b, err)
	}
	return b
}

// next returns the next message normalized (gatewayMasked masked).
func (ws *wsStream) next() string {
	ws.t.Helper()
	return normalizeJSON(ws.t, ws.read(), gatewayMasked, nil)
}
