//go:build nocairn

package compat

import "testing"

// TEMPORARY while mvcc is being written: lets the etcd half run alone.
func startCairn(t testing.TB, name string) *server {
	t.Fatalf("built with -tags nocairn: no Cairn")
	return nil
}
