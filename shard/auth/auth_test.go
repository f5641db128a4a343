package auth

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestScripts runs testdata/*: each command applies one auth request (or
// checks a permission) and prints the answer; "state" prints the state,
// after a round trip through Marshal and Unmarshal.
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		s := New()
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(k string) string {
				for _, a := range d.CmdArgs {
					if a.Key == k && len(a.Vals) > 0 {
						return strings.ReplaceAll(a.Vals[0], `\x00`, "\x00")
					}
				}
				return ""
			}
			perm := func() *authpb.Permission {
				typ := authpb.Permission_Type(authpb.Permission_Type_value[strings.ToUpper(arg("type"))])
				return &authpb.Permission{PermType: typ, Key: []byte(arg("key")), RangeEnd: []byte(arg("end"))}
			}
			var r pb.InternalRaftRequest
			switch d.Cmd {
			case "state":
				data, err := s.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				back, err := Unmarshal(data)
				if err != nil {
					t.Fatal(err)
				}
				return back.String()
			case "check":
				typ := authpb.Permission_READ
				if arg("type") == "write" {
					typ = authpb.Permission_WRITE
				}
				return fmt.Sprint(s.Check(arg("user"), []byte(arg("key")), []byte(arg("end")), typ)) + "\n"
			case "admin":
				return fmt.Sprint(s.CheckAdmin(arg("user"))) + "\n"
			case "enable":
				r.AuthEnable = &pb.AuthEnableRequest{}
			case "disable":
				r.AuthDisable = &pb.AuthDisableRequest{}
			case "user-add":
				r.AuthUserAdd = &pb.AuthUserAddRequest{Name: arg("name"), HashedPassword: base64.StdEncoding.EncodeToString([]byte("hash")),
					Options: &authpb.UserAddOptions{NoPassword: d.HasArg("nopass")}}
			case "user-del":
				r.AuthUserDelete = &pb.AuthUserDeleteRequest{Name: arg("name")}
			case "user-get":
				r.AuthUserGet = &pb.AuthUserGetRequest{Name: arg("name")}
			case "grant-role":
				r.AuthUserGrantRole = &pb.AuthUserGrantRoleRequest{User: arg("user"), Role: arg("role")}
			case "revoke-role":
				r.AuthUserRevokeRole = &pb.AuthUserRevokeRoleRequest{Name: arg("user"), Role: arg("role")}
			case "role-add":
				r.AuthRoleAdd = &pb.AuthRoleAddRequest{Name: arg("name")}
			case "role-del":
				r.AuthRoleDelete = &pb.AuthRoleDeleteRequest{Role: arg("name")}
			case "role-get":
				r.AuthRoleGet = &pb.AuthRoleGetRequest{Role: arg("name")}
			case "grant":
				r.AuthRoleGrantPermission = &pb.AuthRoleGrantPermissionRequest{Name: arg("role"), Perm: perm()}
			case "revoke":
				r.AuthRoleRevokePermission = &pb.AuthRoleRevokePermissionRequest{Role: arg("role"), Key: []byte(arg("key")), RangeEnd: []byte(arg("end"))}
			default:
				t.Fatalf("unknown command %q", d.Cmd)
			}
			n, resp, err := s.Apply(&r)
			if err != nil {
				if n != s {
					t.Fatalf("a refusal changed the state")
				}
				return fmt.Sprintf("error: %v rev=%d\n", err, s.Revision())
			}
			s = n
			// protobuf's text form puts one or two spaces between fields
			// at random (so that nobody depends on it): one, always.
			return fmt.Sprintf("%s rev=%d\n", strings.Join(strings.Fields(fmt.Sprint(resp)), " "), s.Revision())
		})
	})
}
