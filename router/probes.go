package router

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/status"
)

// Observer is what the router reports for the node's metrics; the node
// implements it with Prometheus types, so that the router imports none.
// Its methods must not block.
type Observer interface {
	// Probe reports one probe's result: kind "health" with check "" for
	// /health, or "livez" or "readyz" with the name of each check run.
	Probe(kind, check string, ok bool)
}

// noObserver is the Observer of a Config without one.
type noObserver struct{}

func (noObserver) Probe(string, string, bool) {}

// The probe kinds, as Observer.Probe and etcd's metrics name them.
const (
	ProbeHealth = "health"
	ProbeLivez  = "livez"
	ProbeReadyz = "readyz"
)

// DefaultRequestTimeout is etcd's request timeout with its default
// election timeout: 5s plus two election timeouts.
const DefaultRequestTimeout = 5*time.Second + 2*DefaultLeaderCheckInterval

// probeCheck is one named check of /livez or /readyz: nil error is ok.
type probeCheck struct {
	name string
	run  func(ctx context.Context) error
}

// ProbeHandler serves the probes, with etcd 3.5+'s paths, checks, status
// codes and bodies; any other path is not found. Each answers GET only
// (405 with "Allow: GET" otherwise).
//
//   - /health: 200 {"health":"true","reason":""}, or 503 with
//     "health":"false" and the first failing reason of, in order: an
//     alarm not named by ?exclude= (ALARM NOSPACE, ALARM CORRUPT, ALARM
//     UNKNOWN); unless ?serializable=true, RAFT NO LEADER when range 1 or
//     any other range here knows no leader (LeaderWatch); a keys-only,
//     limit-1 read of range 1 (serializable with ?serializable=true) not
//     answered within the request timeout, RANGE ERROR:<error>.
//   - /livez runs serializable_read; /readyz runs data_corruption (no
//     CORRUPT alarm), serializable_read, linearizable_read and
//     non_learner. /livez/<check> and /readyz/<check> run one check.
//     ?exclude=<check> skips one (an unknown name is logged and
//     ignored). 200 "ok\n" (after a "[+]<check> ok" line per check with
//     ?verbose), or 503 listing every check run, "[-]<check> failed:
//     <error>" for those that failed.
//
// In sharded mode linearizable_read also fails while a range here has no
// leader, naming up to three, so that a member is ready only once every
// range it holds has a leader: Kubernetes' probes keep their meaning
// under etcd's check names.
func (s *Server) ProbeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", s.serveHealth)
	serializable := probeCheck{"serializable_read", func(ctx context.Context) error { return s.probeRead(ctx, false) }}
	kinds := map[string][]probeCheck{
		ProbeLivez: {serializable},
		ProbeReadyz: {
			{"data_corruption", s.noCorruption},
			{"linearizable_read", s.linearizableRead},
			{"non_learner", s.nonLearner},
			serializable,
		},
	}
	for kind, checks := range kinds {
		mux.Handle("/"+kind, s.checksHandler(kind, checks, true))
		for _, c := range checks {
			mux.Handle("/"+kind+"/"+c.name, s.checksHandler(kind, []probeCheck{c}, false))
		}
	}
	return mux
}

// getOnly answers 405 to anything but GET, as etcd's probes do, and
// reports whether r is a GET.
func getOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet {
		return true
	}
	w.Header().Set("Allow", http.MethodGet)
	http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
	return false
}

// healthBody is /health's JSON, etcd's field order.
type healthBody struct {
	Health string `json:"health"`
	Reason string `json:"reason"`
}

// serveHealth is /health (ProbeHandler).
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	if !getOnly(w, r) {
		return
	}
	q := r.URL.Query()
	reason := s.healthReason(r.Context(), queryNames(q["exclude"]), q.Get("serializable") == "true")
	s.observer().Probe(ProbeHealth, "", reason == "")
	b, err := json.Marshal(healthBody{Health: boolString(reason == ""), Reason: reason})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if reason != "" {
		s.cfg.Log.Warn("/health fails", "reason", reason)
		http.Error(w, string(b), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(b)
}

// healthReason is why /health fails, "" if it does not.
func (s *Server) healthReason(ctx context.Context, excluded map[string]bool, serializable bool) string {
	alarms, _ := s.cfg.Shard.Alarms(ctx, false) // a local read; the range read below fails too if it cannot
	for _, a := range alarms {
		if excluded[a.Alarm.String()] {
			continue
		}
		switch a.Alarm {
		case pb.AlarmType_NOSPACE:
			return "ALARM NOSPACE"
		case pb.AlarmType_CORRUPT:
			return "ALARM CORRUPT"
		default:
			return "ALARM UNKNOWN"
		}
	}
	if !serializable {
		if _, _, ok := s.cfg.Shard.Leader(); !ok || len(s.leaderless().Ranges) > 0 {
			return "RAFT NO LEADER"
		}
	}
	if err := s.probeRead(ctx, !serializable); err != nil {
		return "RANGE ERROR:" + err.Error()
	}
	return ""
}

// probeRead reads one key of range 1, keys only, within the request
// timeout; its error is the message etcd's client would show.
func (s *Server) probeRead(ctx context.Context, linearizable bool) error {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	req := &pb.RangeRequest{Key: []byte{0}, KeysOnly: true, Limit: 1, Serializable: !linearizable}
	if _, err := s.cfg.Shard.Range(ctx, req, linearizable); err != nil {
		return fmt.Errorf("%s", status.Convert(toGRPC(err)).Message())
	}
	return nil
}

// maxLeaderlessNamed bounds the ranges linearizable_read names.
const maxLeaderlessNamed = 3

// linearizableRead is readyz's linearizable_read: a linearizable read of
// range 1, and every range here has a leader.
func (s *Server) linearizableRead(ctx context.Context) error {
	if l := s.leaderless(); s.cfg.Ranges != nil && !s.cfg.Ranges.static && len(l.Ranges) > 0 {
		var ids []string
		for _, r := range l.Ranges[:min(len(l.Ranges), maxLeaderlessNamed)] {
			ids = append(ids, fmt.Sprint(r.ID))
		}
		more := ""
		if len(l.Ranges) > maxLeaderlessNamed {
			more = fmt.Sprintf(" and %d more", len(l.Ranges)-maxLeaderlessNamed)
		}
		return fmt.Errorf("etcdserver: no leader of range %s%s", strings.Join(ids, ", "), more)
	}
	return s.probeRead(ctx, true)
}

// noCorruption is readyz's data_corruption: no CORRUPT alarm.
func (s *Server) noCorruption(ctx context.Context) error {
	alarms, err := s.cfg.Shard.Alarms(ctx, false)
	if err != nil {
		return fmt.Errorf("%s", status.Convert(toGRPC(err)).Message())
	}
	for _, a := range alarms {
		if a.Alarm == pb.AlarmType_CORRUPT {
			return fmt.Errorf("alarm activated: %s", a.Alarm)
		}
	}
	return nil
}

// nonLearner is readyz's non_learner.
func (s *Server) nonLearner(context.Context) error {
	if s.cfg.Node != nil && s.cfg.Node.Status().IsLearner {
		return fmt.Errorf("not supported for learner")
	}
	return nil
}

// checksHandler serves /<kind> (root: ?exclude= applies) or
// /<kind>/<check>, running checks in name order.
func (s *Server) checksHandler(kind string, checks []probeCheck, root bool) http.HandlerFunc {
	checks = slices.Clone(checks)
	slices.SortFunc(checks, func(a, b probeCheck) int { return strings.Compare(a.name, b.name) })
	return func(w http.ResponseWriter, r *http.Request) {
		if !getOnly(w, r) {
			return
		}
		q := r.URL.Query()
		run := checks
		if root {
			excluded := queryNames(q["exclude"])
			run = nil
			for _, c := range checks {
				if excluded[c.name] {
					delete(excluded, c.name)
					continue
				}
				run = append(run, c)
			}
			if len(excluded) > 0 {
				names := make([]string, 0, len(excluded))
				for n := range excluded {
					names = append(names, n)
				}
				slices.Sort(names)
				s.cfg.Log.Warn("probe exclusions name no check", "path", r.URL.Path, "checks", names)
			}
		}
		var out strings.Builder
		failed := false
		for _, c := range run {
			err := c.run(r.Context())
			s.observer().Probe(kind, c.name, err == nil)
			if err != nil {
				failed = true
				fmt.Fprintf(&out, "[-]%s failed: %v\n", c.name, err)
			} else {
				fmt.Fprintf(&out, "[+]%s ok\n", c.name)
			}
		}
		if failed {
			s.cfg.Log.Warn("probe fails", "path", r.URL.Path, "checks", out.String())
			http.Error(w, out.String(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if q.Has("verbose") {
			_, _ = w.Write([]byte(out.String()))
		}
		_, _ = w.Write([]byte("ok\n"))
	}
}

// queryNames is the set of a repeated query parameter's non-empty values.
func queryNames(values []string) map[string]bool {
	set := make(map[string]bool, len(values))
	for _, v := range values {
		if v != "" {
			set[v] = true
		}
	}
	return set
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func (s *Server) observer() Observer {
	if s.cfg.Observer == nil {
		return noObserver{}
	}
	return s.cfg.Observer
}

func (s *Server) requestTimeout() time.Duration {
	if s.cfg.RequestTimeout <= 0 {
		return DefaultRequestTimeout
	}
	return s.cfg.RequestTimeout
}
