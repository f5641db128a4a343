package router

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"go.etcd.io/etcd/api/v3/version"
)

// TestHTTPVersion: /version has every field of etcd's, with the versions
// a cluster of etcd members of the API version Cairn serves reports
// (tests/compat compares it with embedded etcd's), and refuses other
// methods than GET as etcd does.
func TestHTTPVersion(t *testing.T) {
	h := New(Config{}).HTTPHandler(false)
	get := func(method string) *http.Response {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, "/version", nil))
		return rec.Result()
	}
	resp := get(http.MethodGet)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /version: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var got map[string]string
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("GET /version: %s: %v", body, err)
	}
	minor := version.Cluster(version.Version) + ".0"
	want := map[string]string{"etcdserver": version.Version, "etcdcluster": minor, "storage": minor}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("GET /version: %s, want %v", body, want)
	}
	for _, m := range []string{http.MethodHead, http.MethodPost} {
		if resp := get(m); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodGet {
			t.Errorf("%s /version: %d, Allow %q; want 405, GET", m, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
}
