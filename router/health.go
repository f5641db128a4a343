package router

import (
	"context"
	"encoding/json"
	"expvar"
	"net/http"
	httppprof "net/http/pprof"
	"time"

	"go.etcd.io/etcd/api/v3/version"
)

// healthTimeout bounds the read /health makes, as etcd bounds its own.
const healthTimeout = time.Second

// HTTPHandler serves etcd's HTTP endpoints on the client port: /health
// (and /livez, /readyz) and /version, with etcd's JSON bodies, and
// /debug/vars (Go's expvar: memory statistics, command line); with pprof,
// Go's runtime profiles under /debug/pprof/ as etcd's --enable-pprof; and
// Cairn's range map, /cairn/ranges as JSON and /cairn/ranges.html drawn
// (rangeinfo.go).
func (s *Server) HTTPHandler(pprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/debug/vars", expvar.Handler())
	if pprof {
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}
	probes := s.ProbeHandler()
	for _, p := range probePaths {
		mux.Handle(p, probes)
	}
	mux.HandleFunc("GET /cairn/ranges", s.serveRanges)
	mux.HandleFunc("GET /cairn/ranges.html", s.serveRangeMap)
	mux.HandleFunc("/version", serveVersion)
	return mux
}

// probePaths are the paths ProbeHandler serves, as ServeMux patterns.
var probePaths = []string{"/health", "/livez", "/readyz"}

// ProbeHandler serves the probes alone: /health, /livez and /readyz; any
// other path is not found. The node serves it on the metrics URLs.
func (s *Server) ProbeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", s.health)
	mux.HandleFunc("/readyz", s.health)
	mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	return mux
}

// serveVersion answers GET /version with etcd's body: the etcd version
// Cairn serves the API of, and the cluster and storage versions etcd would
// report for a cluster of members of that version (its major.minor, as
// Status's storage version).
func serveVersion(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	v := version.Cluster(version.Version) + ".0"
	b, err := json.Marshal(version.Versions{Server: version.Version, Cluster: v, Storage: v})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// health answers {"health":"true"} when the shard has a leader and answers a
// linearizable read in time, like etcd's /health; 503 with a reason otherwise.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	reason := ""
	if _, _, ok := s.cfg.Shard.Leader(); !ok {
		reason = "RAFT NO LEADER"
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		if _, err := s.cfg.Shard.Status(ctx, r.URL.Query().Get("serializable") != "true"); err != nil {
			reason = "QGET ERROR:" + err.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if reason != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"health": boolString(reason == ""), "reason": reason})
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
