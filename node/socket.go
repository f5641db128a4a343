package node

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenTCP listens on addr with SO_REUSEPORT and SO_REUSEADDR as
// Config.SocketReusePort and SocketReuseAddress ask (etcd's
// --socket-reuse-port, --socket-reuse-address).
func (n *Node) listenTCP(addr string) (net.Listener, error) {
	port, address := n.cfg.SocketReusePort, n.cfg.SocketReuseAddress
	lc := net.ListenConfig{}
	if port || address {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var err error
			if cerr := c.Control(func(fd uintptr) {
				if address {
					err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}
				if err == nil && port {
					err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
				}
			}); cerr != nil {
				return cerr
			}
			return err
		}
	}
	return lc.Listen(context.Background(), "tcp", addr)
}
