package shard

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// alarmsPrefix names the internal records of raised alarms:
// "alarm/<type>/<member id, hex>" with an empty value.
const alarmsPrefix = "alarm/"

func alarmKey(a *pb.AlarmMember) string {
	return fmt.Sprintf("%s%d/%016x", alarmsPrefix, a.Alarm, a.MemberID)
}

// alarms is the set of raised alarms, replicated through the log (etcd
// keeps them in raft too). The apply goroutine changes it; anyone reads.
type alarms struct {
	mu  sync.Mutex
	set []*pb.AlarmMember // sorted by member, then type
}

// parseAlarmKey is the alarm an internal record name (alarmKey) names.
func parseAlarmKey(name string) (*pb.AlarmMember, bool) {
	typ, member, ok := strings.Cut(strings.TrimPrefix(name, alarmsPrefix), "/")
	t, err1 := strconv.Atoi(typ)
	id, err2 := strconv.ParseUint(member, 16, 64)
	if !ok || err1 != nil || err2 != nil {
		return nil, false
	}
	return &pb.AlarmMember{MemberID: id, Alarm: pb.AlarmType(t)}, true
}

func (a *alarms) load(store *mvcc.Store) error {
	var set []*pb.AlarmMember
	err := store.ScanMeta(alarmsPrefix, func(name string, _ []byte) {
		if m, ok := parseAlarmKey(name); ok {
			set = append(set, m)
		}
	})
	if err != nil {
		return fmt.Errorf("shard: load alarms: %w", err)
	}
	sortAlarms(set)
	a.mu.Lock()
	a.set = set
	a.mu.Unlock()
	return nil
}

func sortAlarms(set []*pb.AlarmMember) {
	slices.SortFunc(set, func(x, y *pb.AlarmMember) int {
		switch {
		case x.MemberID != y.MemberID:
			if x.MemberID < y.MemberID {
				return -1
			}
			return 1
		default:
			return int(x.Alarm) - int(y.Alarm)
		}
	})
}

// list returns the raised alarms, of one type unless typ is NONE.
func (a *alarms) list(typ pb.AlarmType) []*pb.AlarmMember {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*pb.AlarmMember
	for _, m := range a.set {
		if typ == pb.AlarmType_NONE || m.Alarm == typ {
			out = append(out, &pb.AlarmMember{MemberID: m.MemberID, Alarm: m.Alarm})
		}
	}
	return out
}

func (a *alarms) has(typ pb.AlarmType) bool { return len(a.list(typ)) > 0 }

// apply raises or clears an alarm in b and in memory, and answers as etcd:
// the alarm changed, or none if nothing changed.
func (a *alarms) apply(b *mvcc.Batch, r *pb.AlarmRequest) *pb.AlarmResponse {
	m := &pb.AlarmMember{MemberID: r.MemberID, Alarm: r.Alarm}
	a.mu.Lock()
	defer a.mu.Unlock()
	i := slices.IndexFunc(a.set, func(x *pb.AlarmMember) bool { return x.MemberID == m.MemberID && x.Alarm == m.Alarm })
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{Revision: int64(b.Rev())}}
	switch r.Action {
	case pb.AlarmRequest_ACTIVATE:
		if m.Alarm == pb.AlarmType_NONE {
			return resp
		}
		if i < 0 {
			a.set = append(a.set, m)
			sortAlarms(a.set)
			b.SetMeta(alarmKey(m), nil)
		}
		resp.Alarms = []*pb.AlarmMember{m}
	case pb.AlarmRequest_DEACTIVATE:
		if i >= 0 {
			a.set = slices.Delete(a.set, i, i+1)
			b.DeleteMeta(alarmKey(m))
			resp.Alarms = []*pb.AlarmMember{m}
		}
	}
	return resp
}

// Capped reports whether a write adds data, and so is refused while
// NOSPACE is raised: as etcd, puts, txns holding a put in either branch
// (nested ones included) and lease grants; deletes, compactions and
// revokes, which free space, are not.
func Capped(r any) bool {
	switch r := r.(type) {
	case *pb.PutRequest, *pb.LeaseGrantRequest:
		return true
	case *pb.TxnRequest:
		return !mvcc.EachOp(r, func(op *pb.RequestOp) bool { return op.GetRequestPut() == nil })
	}
	return false
}
