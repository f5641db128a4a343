package compat

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
)

// probeAnswer is what a probe request gets, as compared: status,
// Content-Type, Allow and the body's lines as a set (etcd runs its checks
// in map order).
type probeAnswer struct {
	status             int
	contentType, allow string
	lines              []string
}

func probe(t *testing.T, method, url string) probeAnswer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	slices.Sort(lines)
	return probeAnswer{resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Allow"), lines}
}

// TestProbesMatchEtcd: /health, /livez and /readyz answer on Cairn (both
// modes) as on etcd: status, Content-Type and body, for healthy servers,
// with the NOSPACE alarm raised and after it is disarmed.
func TestProbesMatchEtcd(t *testing.T) {
	etcd := startEtcd(t, "etcd")
	for _, mode := range []struct {
		name string
		edit func(*node.Config)
	}{
		{"single-group", nil},
		{"sharded", func(c *node.Config) { c.Sharded, c.InitialSplitKeys = true, [][]byte{[]byte("m")} }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			cairn := startCairnWith(t, "cairn", mode.edit)
			servers := []*server{etcd, cairn}
			compare := func(stage, method, path string) {
				t.Helper()
				want := probe(t, method, etcd.endpoint+path)
				got := probe(t, method, cairn.endpoint+path)
				if !slices.Equal(got.lines, want.lines) || got.status != want.status || got.contentType != want.contentType || got.allow != want.allow {
					t.Errorf("%s: %s %s:\ncairn %+v\n etcd %+v", stage, method, path, got, want)
				}
			}
			for _, path := range []string{"/health", "/health?serializable=true", "/livez", "/livez?verbose", "/readyz",
				"/readyz?verbose", "/readyz?exclude=linearizable_read&verbose", "/readyz/non_learner", "/livez/serializable_read?verbose",
				"/readyz/no_such_check"} {
				compare("healthy", http.MethodGet, path)
			}
			compare("healthy", http.MethodPost, "/health")
			compare("healthy", http.MethodPost, "/readyz")

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ids := make([]uint64, len(servers))
			for i, s := range servers {
				st, err := s.cli.Status(ctx, s.endpoint)
				if err != nil {
					t.Fatal(err)
				}
				ids[i] = st.Header.MemberId
				if _, err := pb.NewMaintenanceClient(s.cli.ActiveConnection()).Alarm(ctx, &pb.AlarmRequest{
					Action: pb.AlarmRequest_ACTIVATE, MemberID: ids[i], Alarm: pb.AlarmType_NOSPACE}); err != nil {
					t.Fatalf("%s: activate NOSPACE: %v", s.name, err)
				}
			}
			if a := probe(t, http.MethodGet, cairn.endpoint+"/health"); a.status != http.StatusServiceUnavailable ||
				!slices.Equal(a.lines, []string{"", `{"health":"false","reason":"ALARM NOSPACE"}` + "\n"}) {
				t.Errorf("cairn /health with NOSPACE: %+v", a)
			}
			for _, path := range []string{"/health", "/health?exclude=NOSPACE", "/readyz", "/livez"} {
				compare("NOSPACE", http.MethodGet, path)
			}
			for i, s := range servers {
				if _, err := s.cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: ids[i], Alarm: pb.AlarmType_NOSPACE}); err != nil {
					t.Fatalf("%s: disarm: %v", s.name, err)
				}
			}
			compare("disarmed", http.MethodGet, "/health")
			if a := probe(t, http.MethodGet, cairn.endpoint+"/health"); a.status != http.StatusOK {
				t.Errorf("cairn /health after disarm: %+v", a)
			}
		})
	}
}
