package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
)

// The hidden subcommands below are what the harness re-executes itself as, so
// that each server has a process (and a Go runtime) of its own.

// serveEtcd runs a one-member etcd from embed until SIGTERM or SIGINT.
func serveEtcd(args []string) error {
	fs := flag.NewFlagSet("serve-etcd", flag.ExitOnError)
	name := fs.String("name", "etcd", "member name")
	dir := fs.String("data-dir", "", "data directory")
	client := fs.String("listen-client-urls", "", "client URL")
	peer := fs.String("listen-peer-urls", "", "peer URL")
	initial := fs.String("initial-cluster", "", "name=peer URL of every member (default: this one alone)")
	certFile := fs.String("cert-file", "", "client TLS certificate (https client URL)")
	keyFile := fs.String("key-file", "", "client TLS key")
	caFile := fs.String("trusted-ca-file", "", "CA verifying client certificates")
	clientCertAuth := fs.Bool("client-cert-auth", false, "require a verified client certificate")
	_ = fs.Parse(args)

	cu, err := url.Parse(*client)
	if err != nil {
		return err
	}
	pu, err := url.Parse(*peer)
	if err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dir
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{"stderr"}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(*name)
	if *initial != "" {
		cfg.InitialCluster = *initial
	}
	cfg.ListenMetricsUrls = nil
	cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = *certFile, *keyFile
	cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = *caFile, *clientCertAuth
	cfg.EnablePprof = true // heap figures (watch-scale) come from /debug/pprof and /debug/vars
	// Everything else is etcd's default, fsync included: Cairn fsyncs its raft
	// log before it acknowledges a write, and so must the baseline.

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return err
	case <-stop:
		return nil
	}
	fmt.Fprintln(os.Stderr, "ready to serve client requests")
	select {
	case err := <-e.Err():
		return err
	case <-stop:
		return nil
	}
}

// serveCeiling runs the no-op KV server until SIGTERM or SIGINT.
func serveCeiling(args []string) error {
	fs := flag.NewFlagSet("serve-ceiling", flag.ExitOnError)
	client := fs.String("listen-client-urls", "", "client URL")
	_ = fs.Parse(args)
	cu, err := url.Parse(*client)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cu.Host)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	pb.RegisterKVServer(s, ceiling{})
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	fmt.Fprintln(os.Stderr, "ready to serve client requests")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errc:
		return err
	case <-stop:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { <-ctx.Done(); s.Stop() }()
	s.GracefulStop()
	return nil
}

// ceiling is etcd's KV service doing no work: every call is answered at once
// with an empty response and a fixed header. What it measures is gRPC, the
// client and the machine.
type ceiling struct {
	pb.UnimplementedKVServer
}

func ceilingHeader() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: 1, MemberId: 1, Revision: 1, RaftTerm: 1}
}

func (ceiling) Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error) {
	return &pb.RangeResponse{Header: ceilingHeader()}, nil
}

func (ceiling) Put(context.Context, *pb.PutRequest) (*pb.PutResponse, error) {
	return &pb.PutResponse{Header: ceilingHeader()}, nil
}

func (ceiling) DeleteRange(context.Context, *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return &pb.DeleteRangeResponse{Header: ceilingHeader()}, nil
}

func (ceiling) Txn(context.Context, *pb.TxnRequest) (*pb.TxnResponse, error) {
	return &pb.TxnResponse{Header: ceilingHeader(), Succeeded: true}, nil
}

func (ceiling) Compact(context.Context, *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return &pb.CompactionResponse{Header: ceilingHeader()}, nil
}
