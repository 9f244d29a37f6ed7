// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hot loops of the perf tools (TCP_RR and TCP_CRR on both sides) make
// their blocking calls raw, without telling the Go scheduler, as a C
// netperf would. Through unix.Read and friends, a thread blocked for more
// than a sysmon tick (20 µs and up) can lose its P, and getting one back
// when the call returns costs a scheduler round trip. Measured on a veth
// pair between two namespaces, client and server on different cores: a
// C client and server took 10.4 µs per transaction (p99 13 µs); a Go
// client through unix.Read 14.3 µs (p99 60 µs), through raw calls 10.8 µs
// (p99 22 µs). That tail would hide the datapath, so the calls are raw.
//
// A raw call keeps its P while it blocks, so garbage collection cannot stop
// the world until it returns. The clients are one goroutine each; the
// server's echo loops allocate nothing, and every socket either side blocks
// on has SO_RCVTIMEO and SO_SNDTIMEO set.

// rawRead is read(2).
func rawRead(fd int, p []byte) (int, error) { return rawIO(unix.SYS_READ, fd, p) }

// rawWrite is write(2).
func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

// rawIO is read(2) or write(2), by trap.
func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, errno := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// putPort writes port in network byte order into a raw sockaddr's port.
func putPort(dst *uint16, port uint16) {
	p := (*[2]byte)(unsafe.Pointer(dst))
	p[0], p[1] = byte(port>>8), byte(port)
}

// rawConnect is connect(2) to an IPv4 or IPv6 address.
func rawConnect(fd int, sa *sockAddr) error {
	ptr, n := unsafe.Pointer(&sa.r4), uintptr(unix.SizeofSockaddrInet4)
	if sa.family == unix.AF_INET6 {
		ptr, n = unsafe.Pointer(&sa.r6), unix.SizeofSockaddrInet6
	}
	_, _, errno := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(ptr), n)
	if errno != 0 {
		return errno
	}
	return nil
}
