package robustness

import (
	"testing"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/tests/v3/robustness/model"
)

// Hand-made histories for the sparse model: what it must accept (revisions
// with gaps, concurrent writes ordered by revision, unknown outcomes) and
// what it must refuse (a revision handed out twice, revisions going back
// in real time, stale reads, a read at R missing a write at or below R).

func hPut(key, value string) model.EtcdRequest {
	return model.EtcdRequest{Type: model.Txn, Txn: &model.TxnRequest{OperationsOnSuccess: []model.EtcdOperation{
		{Type: model.PutOperation, Put: model.PutOptions{Key: key, Value: model.ToValueOrHash(value)}}}}}
}

func hDelete(key string) model.EtcdRequest {
	return model.EtcdRequest{Type: model.Txn, Txn: &model.TxnRequest{OperationsOnSuccess: []model.EtcdOperation{
		{Type: model.DeleteOperation, Delete: model.DeleteOptions{Key: key}}}}}
}

func hCAS(key string, modRev int64, value string) model.EtcdRequest {
	r := hPut(key, value)
	r.Txn.Conditions = []model.EtcdCondition{{Key: key, ExpectedRevision: modRev}}
	return r
}

func hGet(key string) model.EtcdRequest {
	return model.EtcdRequest{Type: model.Range, Range: &model.RangeRequest{RangeOptions: model.RangeOptions{Start: key}}}
}

func hList(start, end string) model.EtcdRequest {
	return model.EtcdRequest{Type: model.Range, Range: &model.RangeRequest{RangeOptions: model.RangeOptions{Start: start, End: end}}}
}

func rPut(rev int64) model.MaybeEtcdResponse {
	return model.MaybeEtcdResponse{EtcdResponse: model.EtcdResponse{Txn: &model.TxnResponse{Results: []model.EtcdOperationResult{{}}}, Revision: rev}}
}

func rDelete(deleted, rev int64) model.MaybeEtcdResponse {
	return model.MaybeEtcdResponse{EtcdResponse: model.EtcdResponse{Txn: &model.TxnResponse{Results: []model.EtcdOperationResult{{Deleted: deleted}}}, Revision: rev}}
}

func rCASFailed(rev int64) model.MaybeEtcdResponse {
	return model.MaybeEtcdResponse{EtcdResponse: model.EtcdResponse{Txn: &model.TxnResponse{Failure: true, Results: []model.EtcdOperationResult{}}, Revision: rev}}
}

// rGet: kvs are key, value, mod revision, version, ...
func rGet(rev int64, kvs ...any) model.MaybeEtcdResponse {
	resp := model.RangeResponse{KVs: []model.KeyValue{}}
	for i := 0; i < len(kvs); i += 4 {
		resp.KVs = append(resp.KVs, model.KeyValue{Key: kvs[i].(string), ValueRevision: model.ValueRevision{
			Value: model.ToValueOrHash(kvs[i+1].(string)), ModRevision: int64(kvs[i+2].(int)), Version: int64(kvs[i+3].(int))}})
	}
	resp.Count = int64(len(resp.KVs))
	return model.MaybeEtcdResponse{EtcdResponse: model.EtcdResponse{Range: &resp, Revision: rev}}
}

func rFailed() model.MaybeEtcdResponse {
	return model.MaybeEtcdResponse{Error: "context deadline exceeded"}
}

// op is one client operation called at call and answered at ret (failed
// ones: never answered); hints as sparseInput's.
func op(client int, call, ret int64, req model.EtcdRequest, resp model.MaybeEtcdResponse, hints ...int64) porcupine.Operation {
	if resp.Error != "" {
		ret = 1 << 62
	}
	return porcupine.Operation{ClientId: client, Input: sparseInput{req: req, hints: hints}, Call: call, Output: resp, Return: ret}
}

func TestSparseModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
		ops  []porcupine.Operation
	}{
		{"gaps between revisions", true, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rPut(5)),
			op(0, 2, 3, hPut("b", "2"), rPut(9)),
			op(0, 4, 5, hList("a", "z"), rGet(9, "a", "1", 5, 1, "b", "2", 9, 1)),
			op(0, 6, 7, hPut("a", "3"), rPut(40)),
			op(0, 8, 9, hGet("a"), rGet(41, "a", "3", 40, 2)),
		}},
		{"a revision handed out twice", false, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rPut(5)),
			op(1, 2, 3, hPut("b", "2"), rPut(5)),
		}},
		{"a revision handed out twice, concurrently", false, []porcupine.Operation{
			op(0, 0, 10, hPut("a", "1"), rPut(5)),
			op(1, 1, 11, hPut("b", "2"), rPut(5)),
		}},
		{"revisions going back in real time", false, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rPut(9)),
			op(1, 2, 3, hPut("b", "2"), rPut(7)),
		}},
		{"concurrent writes ordered by their revisions", true, []porcupine.Operation{
			op(0, 0, 10, hPut("a", "1"), rPut(9)),
			op(1, 2, 8, hPut("a", "2"), rPut(7)),
			op(2, 11, 12, hGet("a"), rGet(9, "a", "1", 9, 2)),
		}},
		{"a read behind a write that had answered", false, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rPut(5)),
			op(1, 2, 3, hGet("a"), rGet(5)),
		}},
		{"a read at a revision below a write that had answered", false, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rPut(5)),
			op(1, 2, 3, hGet("b"), rGet(4)),
		}},
		{"a read at R misses a concurrent write at or below R", false, []porcupine.Operation{
			op(0, 0, 100, hPut("a", "1"), rPut(5)),
			op(1, 10, 20, hGet("a"), rGet(6)),
		}},
		{"a read at R before a concurrent write above R", true, []porcupine.Operation{
			op(0, 0, 100, hPut("a", "1"), rPut(7)),
			op(1, 10, 20, hGet("a"), rGet(6)),
			op(1, 21, 22, hGet("a"), rGet(7, "a", "1", 7, 1)),
		}},
		{"a write that changes nothing gets a fresh revision", true, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rPut(5)),
			op(0, 2, 3, hCAS("a", 4, "2"), rCASFailed(8)),
			op(0, 4, 5, hDelete("b"), rDelete(0, 11)),
			op(0, 6, 7, hCAS("a", 5, "3"), rPut(12)),
			op(0, 8, 9, hGet("a"), rGet(12, "a", "3", 12, 2)),
		}},
		{"a failed write applied at a hinted revision", true, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rFailed(), 6),
			op(1, 5, 6, hGet("a"), rGet(8, "a", "1", 6, 1)),
		}},
		{"a failed write not applied", true, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rFailed(), 6),
			op(1, 5, 6, hGet("a"), rGet(8)),
		}},
		{"a failed write seen at a revision it was not hinted", false, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rFailed(), 7),
			op(1, 5, 6, hGet("a"), rGet(8, "a", "1", 6, 1)),
		}},
		{"a value nobody wrote", false, []porcupine.Operation{
			op(0, 5, 6, hGet("a"), rGet(8, "a", "1", 6, 1)),
		}},
		{"a deleted key read back", false, []porcupine.Operation{
			op(0, 0, 1, hPut("a", "1"), rPut(3)),
			op(0, 2, 3, hDelete("a"), rDelete(1, 10)),
			op(1, 4, 5, hGet("a"), rGet(12, "a", "1", 3, 1)),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := porcupine.CheckOperations(sparseModel(), tc.ops)
			if res != tc.ok {
				t.Fatalf("linearizable: %v, want %v", res, tc.ok)
			}
		})
	}
}
