package router

import (
	"encoding/json"
	"expvar"
	"net/http"
	httppprof "net/http/pprof"

	"go.etcd.io/etcd/api/v3/version"
)

// HTTPHandler serves etcd's HTTP endpoints on the client port: the probes
// /health, /livez and /readyz (ProbeHandler) and /version, with etcd's
// bodies, and /debug/vars (Go's expvar: memory statistics, command line); with pprof,
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
var probePaths = []string{"/health", "/livez", "/livez/", "/readyz", "/readyz/"}

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
