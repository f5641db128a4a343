package compat

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestVersionAndHealthLikeEtcd: /version answers with etcd's body (the
// same fields and versions as embedded etcd of the API version Cairn
// serves), and gRPC's health service answers as etcd's.
func TestVersionAndHealthLikeEtcd(t *testing.T) {
	etcd, cairn := startPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type answer struct {
		status      int
		contentType string
		body        string
		health      string
	}
	ask := func(s *server) answer {
		resp, err := http.Get(s.endpoint + "/version")
		if err != nil {
			t.Fatalf("%s: GET /version: %v", s.name, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		a := answer{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: string(body)}
		h, err := healthpb.NewHealthClient(s.cli.ActiveConnection()).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("%s: health check: %v", s.name, err)
		}
		a.health = h.Status.String()
		return a
	}
	if e, c := ask(etcd), ask(cairn); e != c {
		t.Fatalf("etcd answered %+v\ncairn answered %+v", e, c)
	}
}
