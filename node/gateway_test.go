package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// post sends body to url with c and returns the status and the body.
func post(t *testing.T, c *http.Client, url, body string) (int, string) {
	t.Helper()
	resp, err := c.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestGatewayOverTLS: on an https:// client URL with a client certificate
// required, the JSON gateway answers an HTTP/1.1 client with a certificate
// (its calls go to the node's own gRPC server in memory, not through the
// TLS port), and what it writes a gRPC client reads.
func TestGatewayOverTLS(t *testing.T) {
	ca := nodetest.NewCA(t, "cluster")
	srvCert, srvKey := ca.Issue(t, "server")
	cliCert, cliKey := ca.Issue(t, "client")
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.ListenClientURLs = []string{"https://127.0.0.1:0"}
		cfg.ClientTLS = node.TLS{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CAFile, ClientCertAuth: true}
	}))
	url := c.Node(0).ClientURLs()[0]
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, ca.CAFile, cliCert, cliKey)}, Timeout: 30 * time.Second}
	if code, body := post(t, hc, url+"/v3/kv/put", `{"key":"Zm9v","value":"YmFy"}`); code != http.StatusOK || !strings.Contains(body, `"revision":"2"`) {
		t.Fatalf("put over JSON: %d %s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := tlsClient(t, clientTLS(t, ca.CAFile, cliCert, cliKey), url).Get(ctx, "foo")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "bar" {
		t.Fatalf("get over gRPC: %v %v", r, err)
	}
	// Without a certificate the TLS port refuses the gateway as it refuses gRPC.
	bare := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, ca.CAFile, "", "")}, Timeout: 30 * time.Second}
	if resp, err := bare.Post(url+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"Zm9v"}`)); err == nil {
		resp.Body.Close()
		t.Fatalf("range without a client certificate: %s, want a TLS error", resp.Status)
	}
}

// TestClientHTTPURLs: with --listen-client-http-urls the HTTP URL serves
// the gateway and the probes and the client URL gRPC alone; the gateway can
// be turned off; --host-whitelist refuses other Host headers over plain
// HTTP with 421.
func TestClientHTTPURLs(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.ListenClientHTTPURLs = []string{"http://127.0.0.1:0"}
		cfg.HostWhitelist = []string{"127.0.0.1"}
	}))
	n := c.Node(0)
	httpURL := n.ClientHTTPURLs()
	if len(httpURL) != 1 || !strings.HasPrefix(httpURL[0], "http://127.0.0.1:") {
		t.Fatalf("ClientHTTPURLs %v: want one http://127.0.0.1:port", httpURL)
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	if code, body := post(t, hc, httpURL[0]+"/v3/kv/put", `{"key":"Zm9v","value":"YmFy"}`); code != http.StatusOK {
		t.Fatalf("put over JSON on the HTTP URL: %d %s", code, body)
	}
	if resp, err := hc.Get(httpURL[0] + "/health"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/health on the HTTP URL: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, err := hc.Get(n.ClientURLs()[0] + "/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("/health on the gRPC-only client URL: %s, want the connection closed", resp.Status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r, err := c.Client(0).Get(ctx, "foo"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get over gRPC on the client URL: %v %v", r, err)
	}

	req, err := http.NewRequest(http.MethodPost, httpURL[0]+"/v3/kv/range", strings.NewReader(`{"key":"Zm9v"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "attacker.example:2379"
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(string(b), `"attacker.example"`) {
		t.Fatalf("request for another host: %d %s, want 421 naming it", resp.StatusCode, b)
	}
}

// TestGatewayDisabled: with the gateway off, /v3/ is not found and the rest
// of the HTTP side still answers.
func TestGatewayDisabled(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) { cfg.DisableGRPCGateway = true }))
	url := c.Node(0).ClientURLs()[0]
	hc := &http.Client{Timeout: 30 * time.Second}
	if code, body := post(t, hc, url+"/v3/kv/range", `{"key":"Zm9v"}`); code != http.StatusNotFound {
		t.Fatalf("range over JSON with the gateway off: %d %s, want 404", code, body)
	}
	if resp, err := hc.Get(url + "/health"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/health: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// TestGatewayWebsocketWatch: /v3/watch opened as a websocket (a GET asking
// to upgrade, as a browser opens one) runs the watch stream: the create
// request sent as a message is answered by the created response, and a put
// made afterwards arrives as one text message, {"result":{…,"events":[…]}},
// as etcd's gateway frames it. The same route still streams over plain
// HTTP, one line per response, to a POST.
func TestGatewayWebsocketWatch(t *testing.T) {
	c := nodetest.Start(t, 1)
	url := c.Node(0).ClientURLs()[0]
	hc := &http.Client{Timeout: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ws, resp, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(url, "http")+"/v3/watch", nil)
	if err != nil {
		t.Fatalf("websocket /v3/watch: %v (%v)", err, resp)
	}
	defer ws.Close()
	if err := ws.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	type watchFrame struct {
		Result struct {
			Header struct {
				Revision string `json:"revision"`
			} `json:"header"`
			Created bool `json:"created"`
			Events  []struct {
				Type string `json:"type"`
				KV   struct {
					Key, Value string
				} `json:"kv"`
			} `json:"events"`
		} `json:"result"`
	}
	read := func(what string) watchFrame {
		t.Helper()
		kind, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var f watchFrame
		if err := json.Unmarshal(msg, &f); kind != websocket.TextMessage || err != nil {
			t.Fatalf("%s: message %d %q: %v, want one JSON text message", what, kind, msg, err)
		}
		return f
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"create_request":{"key":"Zm9v"}}`)); err != nil {
		t.Fatal(err)
	}
	if f := read("created"); !f.Result.Created {
		t.Fatalf("first message %+v, want the created response", f)
	}
	code, body := post(t, hc, url+"/v3/kv/put", `{"key":"Zm9v","value":"YmFy"}`)
	var put struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal([]byte(body), &put); code != http.StatusOK || err != nil {
		t.Fatalf("put over JSON: %d %s (%v)", code, body, err)
	}
	f := read("event")
	if len(f.Result.Events) != 1 || f.Result.Events[0].KV.Key != "Zm9v" || f.Result.Events[0].KV.Value != "YmFy" ||
		f.Result.Events[0].Type != "" || f.Result.Header.Revision != put.Header.Revision {
		t.Fatalf("event message %+v, want the put of foo=bar at revision %s", f, put.Header.Revision)
	}

	// Plain HTTP: the POST's body is the create request, its answer lines.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v3/watch",
		strings.NewReader(`{"create_request":{"key":"Zm9v","start_revision":"`+put.Header.Revision+`"}}`))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	lines := bufio.NewReader(stream.Body)
	for _, what := range []string{"created", "event"} {
		l, err := lines.ReadBytes('\n')
		if err != nil || !strings.HasPrefix(string(l), `{"result":`) {
			t.Fatalf("plain-HTTP watch, %s line: %q %v", what, l, err)
		}
		if what == "event" && !strings.Contains(string(l), `"value":"YmFy"`) {
			t.Fatalf("plain-HTTP watch, event line %q: want the put of foo=bar", l)
		}
	}
}
