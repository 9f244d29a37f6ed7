// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The request/response tools below stand in for netperf's TCP_RR, TCP_CRR
// and UDP_STREAM. They use plain blocking socket system calls, as netperf
// does, instead of Go's netpoller: one blocking read wakes the thread
// straight from the socket, so what they measure is the kernel path, not
// the Go scheduler. `bpfnet perf` runs them as processes of their own,
// pinned to a core, one per namespace.

// Control bytes: the first byte of a TCP connection to the server says
// what it is for.
const (
	// msgEcho starts an echo connection (RR, CRR): every byte read is
	// written back.
	msgEcho = 'r'
	// msgUDPStart asks the UDP counter to start over; the server answers
	// one byte when it has.
	msgUDPStart = 'u'
	// msgUDPStop asks for the count since msgUDPStart; the server answers
	// a UDPReport as a JSON line.
	msgUDPStop = 's'
)

// RRResult is what `bpfnet perf rr` prints: transactions of one byte
// each way on one connection.
type RRResult struct {
	Transactions uint64  `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	Rate         float64 `json:"rate"` // transactions per second
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
}

// CRRResult is what `bpfnet perf crr` prints: connect, one byte each way,
// close, one after another.
type CRRResult struct {
	Connections uint64  `json:"connections"`
	Failures    uint64  `json:"failures"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"rate"` // completed connections per second
}

// UDPResult is what `bpfnet perf udp` prints. Received and Rate are
// counted by the receiver.
type UDPResult struct {
	Size     int     `json:"size"`
	Sent     uint64  `json:"sent"`
	Received uint64  `json:"received"`
	Seconds  float64 `json:"seconds"` // receiver's clock, start to stop message
	Rate     float64 `json:"rate"`    // packets per second delivered
}

// UDPReport is the server's answer to msgUDPStop.
type UDPReport struct {
	Received uint64 `json:"received"`
	Nanos    int64  `json:"nanos"`
}

// sockAddr is an address of either family as the socket calls take it,
// and its raw form for rawConnect, built once per run.
type sockAddr struct {
	ap     netip.AddrPort
	family int
	sa     unix.Sockaddr
	r4     unix.RawSockaddrInet4
	r6     unix.RawSockaddrInet6
}

func sockaddr(ap netip.AddrPort) (*sockAddr, error) {
	a := ap.Addr()
	switch {
	case a.Is4():
		s := &sockAddr{ap: ap, family: unix.AF_INET, sa: &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}}
		s.r4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		putPort(&s.r4.Port, ap.Port())
		return s, nil
	case a.Is6() && !a.Is4In6() && a.Zone() == "":
		s := &sockAddr{ap: ap, family: unix.AF_INET6, sa: &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}}
		s.r6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		putPort(&s.r6.Port, ap.Port())
		return s, nil
	}
	return nil, fmt.Errorf("%s is not an IPv4 or IPv6 address", ap)
}

// socket opens a socket of the address's family; an IPv6 one is IPv6
// only, so that a server on [::]:port and one on 0.0.0.0:port can serve
// side by side.
func (s *sockAddr) socket(typ int) (int, error) {
	fd, err := unix.Socket(s.family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil || s.family != unix.AF_INET6 {
		return fd, err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("setting IPV6_V6ONLY: %w", err)
	}
	return fd, nil
}

func retryEINTR[T any](f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
}

// setTimeouts bounds blocking calls on fd: a lost packet fails the
// transaction instead of hanging the tool.
func setTimeouts(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("setting SO_RCVTIMEO: %w", err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("setting SO_SNDTIMEO: %w", err)
	}
	return nil
}

// dialTCP opens a blocking TCP connection with Nagle off. A connect that
// takes longer than timeout fails.
func dialTCP(sa *sockAddr, timeout time.Duration) (int, error) {
	fd, err := sa.socket(unix.SOCK_STREAM)
	if err != nil {
		return -1, fmt.Errorf("creating TCP socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("setting TCP_NODELAY: %w", err)
	}
	if err := setTimeouts(fd, timeout); err != nil {
		unix.Close(fd)
		return -1, err
	}
	for {
		err = rawConnect(fd, sa)
		// A signal restarts connect; if the handshake finished in between,
		// the restarted call reports EISCONN.
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EALREADY) {
			continue
		}
		if errors.Is(err, unix.EISCONN) {
			err = nil
		}
		break
	}
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EINPROGRESS) {
			err = unix.ETIMEDOUT
		}
		return -1, fmt.Errorf("connecting to %s: %w", sa.ap, err)
	}
	return fd, nil
}

// exchange writes msg and reads as many bytes back.
func exchange(fd int, msg, buf []byte) error {
	if _, err := retryEINTR(func() (int, error) { return rawWrite(fd, msg) }); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	got := 0
	for got < len(msg) {
		n, err := retryEINTR(func() (int, error) { return rawRead(fd, buf[got:len(msg)]) })
		if err != nil {
			return fmt.Errorf("reading: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("reading: %w", io.ErrUnexpectedEOF)
		}
		got += n
	}
	return nil
}

// RR runs request/response transactions of one byte each way on one TCP
// connection to target for d, and measures each one's latency.
func RR(target netip.AddrPort, d time.Duration) (RRResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sa, err := sockaddr(target)
	if err != nil {
		return RRResult{}, err
	}
	fd, err := dialTCP(sa, 2*time.Second)
	if err != nil {
		return RRResult{}, err
	}
	defer unix.Close(fd)
	msg, buf := []byte{msgEcho}, make([]byte, 16)
	// One warm-up transaction: the first one pays for ARP and the like.
	if err := exchange(fd, msg, buf); err != nil {
		return RRResult{}, fmt.Errorf("first transaction: %w", err)
	}
	lat := make([]int64, 0, 1<<20)
	start := time.Now()
	end := start.Add(d)
	now := start
	for now.Before(end) {
		if err := exchange(fd, msg, buf); err != nil {
			return RRResult{}, fmt.Errorf("transaction %d: %w", len(lat)+1, err)
		}
		t := time.Now()
		lat = append(lat, int64(t.Sub(now)))
		now = t
	}
	secs := now.Sub(start).Seconds()
	slices.Sort(lat)
	return RRResult{
		Transactions: uint64(len(lat)),
		Seconds:      secs,
		Rate:         float64(len(lat)) / secs,
		P50us:        float64(percentile(lat, 50)) / 1e3,
		P99us:        float64(percentile(lat, 99)) / 1e3,
	}, nil
}

// percentile of sorted values, nearest rank.
func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// CRR opens connections to target one after another for d: connect,
// one byte each way, close. A connection that fails is counted and the
// run goes on; if more than half fail, CRR fails.
func CRR(target netip.AddrPort, d time.Duration) (CRRResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sa, err := sockaddr(target)
	if err != nil {
		return CRRResult{}, err
	}
	msg, buf := []byte{msgEcho}, make([]byte, 16)
	var res CRRResult
	var lastErr error
	start := time.Now()
	end := start.Add(d)
	now := start
	for now.Before(end) {
		fd, err := dialTCP(sa, time.Second)
		if err == nil {
			err = exchange(fd, msg, buf)
			unix.Close(fd)
		}
		if err != nil {
			res.Failures++
			lastErr = err
		} else {
			res.Connections++
		}
		now = time.Now()
	}
	res.Seconds = now.Sub(start).Seconds()
	res.Rate = float64(res.Connections) / res.Seconds
	if res.Failures > res.Connections {
		return res, fmt.Errorf("%d of %d connections failed, the last: %w", res.Failures, res.Failures+res.Connections, lastErr)
	}
	return res, nil
}

// mmsghdr is struct mmsghdr of sendmmsg(2) and recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// udpBatch is how many datagrams one sendmmsg or recvmmsg moves.
const udpBatch = 64

func newBatch(size int) ([]mmsghdr, []unix.Iovec, []byte) {
	hdrs := make([]mmsghdr, udpBatch)
	iovs := make([]unix.Iovec, udpBatch)
	data := make([]byte, udpBatch*size)
	for i := range hdrs {
		iovs[i].Base = &data[i*size]
		iovs[i].SetLen(size)
		hdrs[i].hdr.Iov = &iovs[i]
		hdrs[i].hdr.SetIovlen(1)
	}
	return hdrs, iovs, data
}

func mmsg(trap uintptr, fd int, hdrs []mmsghdr) (int, error) {
	for {
		n, _, errno := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return int(n), errno
		}
		return int(n), nil
	}
}

// UDP sends datagrams with size bytes of payload to target for d, as fast
// as sendmmsg goes, and asks the server (over a TCP connection to the same
// address) how many it received in the meantime.
func UDP(target netip.AddrPort, d time.Duration, size int) (UDPResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if size < 1 || size > 1472 {
		return UDPResult{}, fmt.Errorf("payload size %d is outside 1-1472", size)
	}
	sa, err := sockaddr(target)
	if err != nil {
		return UDPResult{}, err
	}
	ctl, err := dialTCP(sa, 2*time.Second)
	if err != nil {
		return UDPResult{}, fmt.Errorf("control connection: %w", err)
	}
	defer unix.Close(ctl)
	fd, err := sa.socket(unix.SOCK_DGRAM)
	if err != nil {
		return UDPResult{}, fmt.Errorf("creating UDP socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa.sa); err != nil {
		return UDPResult{}, fmt.Errorf("connecting UDP socket to %s: %w", target, err)
	}
	hdrs, _, _ := newBatch(size)
	// Warm up the path (ARP, conntrack) before the count starts.
	if _, err := mmsg(unix.SYS_SENDMMSG, fd, hdrs[:1]); err != nil {
		return UDPResult{}, fmt.Errorf("sending to %s: %w", target, err)
	}
	time.Sleep(50 * time.Millisecond)
	buf := make([]byte, 512)
	if err := exchange(ctl, []byte{msgUDPStart}, buf); err != nil {
		return UDPResult{}, fmt.Errorf("starting the count: %w", err)
	}
	var res UDPResult
	res.Size = size
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		n, err := mmsg(unix.SYS_SENDMMSG, fd, hdrs)
		if err != nil {
			// The local queue overflowing is the rate limit, not a failure.
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ECONNREFUSED) {
				continue
			}
			return res, fmt.Errorf("sending to %s: %w", target, err)
		}
		res.Sent += uint64(n)
	}
	if _, err := retryEINTR(func() (int, error) { return unix.Write(ctl, []byte{msgUDPStop}) }); err != nil {
		return res, fmt.Errorf("stopping the count: %w", err)
	}
	line, err := readLine(ctl, buf)
	if err != nil {
		return res, fmt.Errorf("reading the count: %w", err)
	}
	var rep UDPReport
	if err := json.Unmarshal(line, &rep); err != nil {
		return res, fmt.Errorf("parsing the count %q: %w", line, err)
	}
	res.Received = rep.Received
	res.Seconds = float64(rep.Nanos) / 1e9
	if res.Seconds > 0 {
		res.Rate = float64(res.Received) / res.Seconds
	}
	return res, nil
}

func readLine(fd int, buf []byte) ([]byte, error) {
	got := 0
	for got < len(buf) {
		n, err := retryEINTR(func() (int, error) { return unix.Read(fd, buf[got:]) })
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, io.ErrUnexpectedEOF
		}
		got += n
		if i := bytes.IndexByte(buf[:got], '\n'); i >= 0 {
			return buf[:i], nil
		}
	}
	return nil, errors.New("line too long")
}

// Server answers RR, CRR and UDP on one address: TCP echo connections and
// UDP control connections, and a UDP socket on the same port that counts
// datagrams.
type Server struct {
	lfd, ufd int
	addr     netip.AddrPort

	received   atomic.Uint64
	mu         sync.Mutex // serialises UDP control connections
	closed     atomic.Bool
	closedOnce sync.Once
}

// Listen opens the server's sockets on addr (port 0 picks one for TCP and
// uses the same for UDP).
func Listen(addr netip.AddrPort) (*Server, error) {
	sa, err := sockaddr(addr)
	if err != nil {
		return nil, err
	}
	lfd, err := sa.socket(unix.SOCK_STREAM)
	if err != nil {
		return nil, fmt.Errorf("creating TCP socket: %w", err)
	}
	s := &Server{lfd: lfd, ufd: -1}
	fail := func(what string, err error) (*Server, error) {
		s.Close()
		return nil, fmt.Errorf("%s %s: %w", what, addr, err)
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("SO_REUSEADDR on", err)
	}
	if err := unix.Bind(lfd, sa.sa); err != nil {
		return fail("binding TCP to", err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		return fail("listening on", err)
	}
	la, err := unix.Getsockname(lfd)
	if err != nil {
		return fail("reading the address of", err)
	}
	var port int
	switch la := la.(type) {
	case *unix.SockaddrInet4:
		port = la.Port
	case *unix.SockaddrInet6:
		port = la.Port
	}
	if sa, err = sockaddr(netip.AddrPortFrom(addr.Addr(), uint16(port))); err != nil {
		return fail("reading the address of", err)
	}
	s.addr = sa.ap
	if s.ufd, err = sa.socket(unix.SOCK_DGRAM); err != nil {
		return fail("creating UDP socket for", err)
	}
	// A large receive queue absorbs scheduling hiccups of the receiver, so
	// that the count reflects the path, not a missed wake-up.
	if err := unix.SetsockoptInt(s.ufd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		_ = unix.SetsockoptInt(s.ufd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	if err := unix.Bind(s.ufd, sa.sa); err != nil {
		return fail("binding UDP to", err)
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Close stops the server; Serve returns.
func (s *Server) Close() error {
	s.closedOnce.Do(func() {
		s.closed.Store(true)
		// shutdown wakes the threads blocked in accept and recvmmsg.
		if s.lfd >= 0 {
			unix.Shutdown(s.lfd, unix.SHUT_RDWR)
		}
		if s.ufd >= 0 {
			unix.Shutdown(s.ufd, unix.SHUT_RDWR)
		}
	})
	return nil
}

// serverIdle is how long the server waits for the next message of a
// connection before it drops it.
const serverIdle = time.Minute

// acceptors is how many threads accept and serve TCP connections, so that
// a few connections (a UDP run's control connection and its data, tests
// running side by side) can be open at once.
const acceptors = 4

// Serve answers until ctx ends or Close is called.
//
// Like netperf's netserver, a connection is served by the thread that
// accepted it, with blocking system calls: no hand-off to another thread
// or goroutine between accept and the first read, which would add a
// scheduler wake-up (and on a CPU-pinned process, a wait for the Go
// scheduler's P) to every TCP_CRR connection. Enough Ps are configured
// that a thread coming back from a blocking call never waits for one.
func (s *Server) Serve(ctx context.Context) error {
	if runtime.GOMAXPROCS(0) < acceptors+2 {
		runtime.GOMAXPROCS(acceptors + 2)
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	// Each returns nil once the server is closed, and an error only when
	// it failed: the first to return closes the server for the others.
	errc := make(chan error, acceptors+1)
	go func() { errc <- s.countUDP() }()
	for range acceptors {
		go func() { errc <- s.accept() }()
	}
	var errs []error
	for range acceptors + 1 {
		errs = append(errs, <-errc)
		s.Close()
	}
	unix.Close(s.lfd)
	unix.Close(s.ufd)
	return errors.Join(errs...)
}

func (s *Server) accept() error {
	runtime.LockOSThread()
	buf := make([]byte, 4096)
	for {
		nfd, _, err := unix.Accept4(s.lfd, unix.SOCK_CLOEXEC)
		if s.closed.Load() {
			if err == nil {
				unix.Close(nfd)
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.EMFILE) {
				continue
			}
			return fmt.Errorf("accepting: %w", err)
		}
		s.handle(nfd, buf)
	}
}

// handle serves one TCP connection; its first byte says what for.
func (s *Server) handle(fd int, buf []byte) {
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	// The echo loop blocks in raw calls (see rawsys.go): bound them.
	if err := setTimeouts(fd, serverIdle); err != nil {
		return
	}
	first := true
	for {
		n, err := retryEINTR(func() (int, error) { return rawRead(fd, buf) })
		if err != nil || n == 0 {
			return
		}
		if first && buf[0] == msgUDPStart {
			s.udpControl(fd, buf)
			return
		}
		first = false
		if _, err := retryEINTR(func() (int, error) { return rawWrite(fd, buf[:n]) }); err != nil {
			return
		}
	}
}

// udpControl answers a UDP run's start and stop.
func (s *Server) udpControl(fd int, buf []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received.Store(0)
	start := time.Now()
	if _, err := unix.Write(fd, []byte{msgUDPStart}); err != nil {
		return
	}
	n, err := retryEINTR(func() (int, error) { return unix.Read(fd, buf[:1]) })
	if err != nil || n == 0 || buf[0] != msgUDPStop {
		return
	}
	elapsed := time.Since(start)
	// Datagrams sent before the stop message may still be queued on the
	// way; give the receiver a moment to count them.
	time.Sleep(20 * time.Millisecond)
	b, _ := json.Marshal(UDPReport{Received: s.received.Load(), Nanos: elapsed.Nanoseconds()})
	unix.Write(fd, append(b, '\n'))
}

func (s *Server) countUDP() error {
	runtime.LockOSThread()
	hdrs, _, _ := newBatch(2048)
	for {
		n, err := mmsg(unix.SYS_RECVMMSG, s.ufd, hdrs)
		if s.closed.Load() {
			return nil
		}
		if err != nil {
			return fmt.Errorf("receiving UDP: %w", err)
		}
		if n == 0 {
			// A shut-down socket reads empty.
			if s.closed.Load() {
				return nil
			}
			continue
		}
		s.received.Add(uint64(n))
	}
}
