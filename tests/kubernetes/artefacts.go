package kubernetes

import "regexp"

// artefact is a test that fails against real etcd too when run through the
// hook: it assumes the brand-new etcd RunEtcd starts, while the harness has
// one server for every test, emptied between them, whose revision goes on
// and whose compactions stay. Its outcome is reported but does not count.
type artefact struct {
	pkg    string         // "etcd3" or "cacher"
	name   *regexp.Regexp // matches the full test name
	reason string
}

// artefacts are the harness artefacts, checked against etcd 3.7.3.
var artefacts = []artefact{
	{"etcd3", regexp.MustCompile(`^TestWatch/RangeStream=(false|true)/WatchSemantics(WithConcurrentDecode)?/allowWatchBookmarks=(false|true),_sendInitialEvents=false,_RV=1$`),
		"watches from resource version 1, i.e. the whole history of a brand-new store; on the shared server revision 1 is compacted (410 Gone) or the replay holds earlier tests' events"},
	{"etcd3", regexp.MustCompile(`^TestTooLargeResourceVersionErrorForWatchList$`),
		"expects resource version 102 to be in the future, true only of a brand-new store"},
	{"cacher", regexp.MustCompile(`^TestWatch/WatchSemantics/allowWatchBookmarks=(false|true),_sendInitialEvents=false,_RV=1$`),
		"as etcd3's WatchSemantics at RV=1: the whole history of a brand-new store"},
	{"cacher", regexp.MustCompile(`^TestLists/ListFromCacheSnapshot=false/List/test_List_with_resource_version_of_(first|second|third|fourth|fifth|six|seventh)_write,_match=Exact$`),
		"expects the cacher's list requests to etcd at revisions 2 to 8, the revisions of the first writes to a brand-new store"},
}

// isArtefact reports whether the test pkg/name is a harness artefact.
func isArtefact(pkg, name string) bool {
	for _, a := range artefacts {
		if a.pkg == pkg && a.name.MatchString(name) {
			return true
		}
	}
	return false
}
