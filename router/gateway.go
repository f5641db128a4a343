package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/tmc/grpc-websocket-proxy/wsproxy"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/etcdserverpb/gw"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/electionpb"
	"github.com/cairn-kv/cairn/proto/lockpb"
)

// Gateway returns etcd's JSON gateway: the HTTP routes etcd's gRPC
// services are annotated with (POST /v3/kv/range, /v3/lease/grant, …),
// each turned into a call on conn, which must reach this Server's own gRPC
// server so that the call takes the interceptors every gRPC client's does
// (etcd's gateway dials its own client port for the same reason). Mount it
// at /v3/.
//
// Bodies are protojson as etcd's gateway writes them: proto field names,
// unpopulated fields left out, unknown fields ignored; 64-bit integers are
// strings and bytes base64. The streaming calls (/v3/watch,
// /v3/lease/keepalive) read one JSON request after another from the body
// and answer each message as a line of its own, {"result":…}, flushed as it
// comes. A failed call answers {"code":…,"message":…} with the gRPC code's
// HTTP status. The Lock and Election services' unary calls are routed at
// etcd's paths too (/v3/lock/lock, /v3/election/campaign, …; see
// lockRoutes), and Observe streams as Watch does (observeRoute). The Auth
// service is at /v3/auth/* (authenticate, enable, user/*, role/*, …); as
// etcd's, the gateway passes a request's Authorization header on as the
// call's "authorization" metadata, which the auth interceptor takes as
// the token.
//
// A request that asks to upgrade to a websocket (a GET with "Upgrade:
// websocket", as a browser's WebSocket opens it) is served as etcd's
// gateway serves it (github.com/tmc/grpc-websocket-proxy): the route is
// called as a POST whose body is the client's messages, each text or binary
// message one JSON request (a newline is added after each), and every line
// the route answers is sent back as one text message — for /v3/watch one
// {"result":…} per response, as the plain-HTTP stream writes it. The
// call ends when either side closes. Any other request is served as above.
//
// ctx bounds the registrations only; the routes serve until conn closes.
func (s *Server) Gateway(ctx context.Context, conn grpc.ClientConnInterface) (http.Handler, error) {
	mux := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{
		Marshaler: &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		},
	}))
	registers := []func() error{
		func() error { return gw.RegisterKVHandlerClient(ctx, mux, pb.NewKVClient(conn)) },
		func() error { return gw.RegisterClusterHandlerClient(ctx, mux, pb.NewClusterClient(conn)) },
		func() error { return gw.RegisterMaintenanceHandlerClient(ctx, mux, pb.NewMaintenanceClient(conn)) },
		func() error { return gw.RegisterAuthHandlerClient(ctx, mux, pb.NewAuthClient(conn)) },
	}
	// As Register: the services without what they need stay out.
	if s.cfg.Merger != nil {
		registers = append(registers, func() error { return gw.RegisterWatchHandlerClient(ctx, mux, pb.NewWatchClient(conn)) })
	}
	if s.cfg.Lessor != nil {
		registers = append(registers, func() error { return gw.RegisterLeaseHandlerClient(ctx, mux, pb.NewLeaseClient(conn)) })
	}
	if s.cfg.Self != nil {
		registers = append(registers, func() error { return lockRoutes(mux, conn) })
	}
	for _, register := range registers {
		if err := register(); err != nil {
			return nil, fmt.Errorf("router: gateway: %w", err)
		}
	}
	return wsproxy.WebsocketProxy(mux,
		// The upgrade comes as a GET; the streaming routes are POSTs.
		wsproxy.WithRequestMutator(func(_ *http.Request, out *http.Request) *http.Request {
			out.Method = http.MethodPost
			return out
		}),
		// A response line is as long as the call makes it (a watch
		// response of many events): no bound below what gRPC allows.
		wsproxy.WithMaxRespBodyBufferSize(math.MaxInt32),
		wsproxy.WithLogger(wsLogger{s.cfg.Log})), nil
}

// wsLogger hands the websocket proxy's messages to the Server's log: its
// warnings (a failed upgrade, a broken connection) as warnings, its traces
// of every message as debug.
type wsLogger struct{ log *slog.Logger }

func (l wsLogger) Warnln(args ...any) {
	l.log.Warn("gateway websocket: " + strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
}

func (l wsLogger) Debugln(args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("gateway websocket: " + strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
	}
}

// lockRoutes routes the unary calls of the Lock and Election services at
// the paths etcd's gateway serves them. Their generated gateway code is in
// etcd's server module, which Cairn does not import (lock.go), so each
// route does by hand what a generated one does: decode the body into the
// request, call conn, and answer as the runtime answers (header metadata,
// errors).
func lockRoutes(mux *runtime.ServeMux, conn grpc.ClientConnInterface) error {
	for _, rt := range []struct {
		path, method string
		req, resp    func() proto.Message
	}{
		{"/v3/lock/lock", "/" + lockServiceName + "/Lock",
			func() proto.Message { return new(lockpb.LockRequest) }, func() proto.Message { return new(lockpb.LockResponse) }},
		{"/v3/lock/unlock", "/" + lockServiceName + "/Unlock",
			func() proto.Message { return new(lockpb.UnlockRequest) }, func() proto.Message { return new(lockpb.UnlockResponse) }},
		{"/v3/election/campaign", "/" + electionServiceName + "/Campaign",
			func() proto.Message { return new(electionpb.CampaignRequest) }, func() proto.Message { return new(electionpb.CampaignResponse) }},
		{"/v3/election/proclaim", "/" + electionServiceName + "/Proclaim",
			func() proto.Message { return new(electionpb.ProclaimRequest) }, func() proto.Message { return new(electionpb.ProclaimResponse) }},
		{"/v3/election/leader", "/" + electionServiceName + "/Leader",
			func() proto.Message { return new(electionpb.LeaderRequest) }, func() proto.Message { return new(electionpb.LeaderResponse) }},
		{"/v3/election/resign", "/" + electionServiceName + "/Resign",
			func() proto.Message { return new(electionpb.ResignRequest) }, func() proto.Message { return new(electionpb.ResignResponse) }},
	} {
		err := mux.HandlePath(http.MethodPost, rt.path, func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
			ctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			in, out := runtime.MarshalerForRequest(mux, r)
			ctx, err := runtime.AnnotateContext(ctx, mux, r, rt.method, runtime.WithHTTPPathPattern(rt.path))
			if err != nil {
				runtime.HTTPError(ctx, mux, out, w, r, err)
				return
			}
			req := rt.req()
			if err := in.NewDecoder(r.Body).Decode(req); err != nil && !errors.Is(err, io.EOF) {
				runtime.HTTPError(ctx, mux, out, w, r, status.Errorf(codes.InvalidArgument, "%v", err))
				return
			}
			var md runtime.ServerMetadata
			resp := rt.resp()
			err = conn.Invoke(ctx, rt.method, req, resp, grpc.Header(&md.HeaderMD), grpc.Trailer(&md.TrailerMD))
			ctx = runtime.NewServerMetadataContext(ctx, md)
			if err != nil {
				runtime.HTTPError(ctx, mux, out, w, r, err)
				return
			}
			runtime.ForwardResponseMessage(ctx, mux, out, w, r, resp)
		})
		if err != nil {
			return err
		}
	}
	return observeRoute(mux, conn)
}

// observeRoute routes Election's Observe, a server stream, at etcd's path
// /v3/election/observe, as etcd's generated gateway does: the body is the
// LeaderRequest, and each leader the stream reports is written as a line
// of its own, {"result":{…}}, flushed as it comes, until the client goes
// away or the stream ends ({"error":{…}} then, as the runtime writes it).
func observeRoute(mux *runtime.ServeMux, conn grpc.ClientConnInterface) error {
	const path, method = "/v3/election/observe", "/" + electionServiceName + "/Observe"
	return mux.HandlePath(http.MethodPost, path, func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		in, out := runtime.MarshalerForRequest(mux, r)
		ctx, err := runtime.AnnotateContext(ctx, mux, r, method, runtime.WithHTTPPathPattern(path))
		if err != nil {
			runtime.HTTPError(ctx, mux, out, w, r, err)
			return
		}
		var req electionpb.LeaderRequest
		if err := in.NewDecoder(r.Body).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			runtime.HTTPError(ctx, mux, out, w, r, status.Errorf(codes.InvalidArgument, "%v", err))
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		var md runtime.ServerMetadata
		stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
		if err == nil {
			err = stream.SendMsg(&req)
		}
		if err == nil {
			err = stream.CloseSend()
		}
		if err == nil {
			md.HeaderMD, err = stream.Header()
		}
		ctx = runtime.NewServerMetadataContext(ctx, md)
		if err != nil {
			runtime.HTTPError(ctx, mux, out, w, r, err)
			return
		}
		runtime.ForwardResponseStream(ctx, mux, out, w, r, func() (proto.Message, error) {
			resp := new(electionpb.LeaderResponse)
			return resp, stream.RecvMsg(resp)
		})
	})
}

// AccessControl wraps the HTTP handler of the client URLs as etcd's access
// controller does:
//
//   - /v3beta/… is served as /v3/… (the gateway's name before etcd 3.4);
//   - a request over plain HTTP whose Host is not in hosts is refused
//     with 421 Misdirected Request, against DNS
//     rebinding (etcd --host-whitelist; CVE-2018-5702). Empty hosts, or
//     "*" among them, allow any host; TLS requests are always allowed.
//
// Hosts are compared without the port, as etcd compares them.
func AccessControl(h http.Handler, hosts []string) http.Handler {
	allowed := map[string]bool{}
	for _, host := range hosts {
		allowed[host] = true
	}
	allowAll := len(allowed) == 0 || allowed["*"]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.Path, "/v3beta/"); ok {
			r.URL.Path = "/v3/" + rest
			r.URL.RawPath = ""
		}
		if r.TLS == nil && !allowAll {
			if host := hostOnly(r.Host); !allowed[host] {
				http.Error(w, rebindingRefusal(host), http.StatusMisdirectedRequest)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// hostOnly is a Host header without its port.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

// rebindingRefusal is the body of AccessControl's 421.
func rebindingRefusal(host string) string {
	return fmt.Sprintf("cairn refused this request: its Host %q is not in --host-whitelist.\n"+
		"Connect over TLS, or add the host name to --host-whitelist "+
		"(plain-HTTP hosts are checked against DNS rebinding, CVE-2018-5702).\n", host)
}
