// SPDX-License-Identifier: Apache-2.0

// Command echo is the server of the Docker end-to-end tests, built
// static and put into the test image. It answers every TCP connection
// and every UDP datagram with one line: the client's address as it sees
// it and its host name ("10.231.0.2:41234 web\n"), so a test can tell
// that the real client address got through and which container answered.
//
//	echo -tcp 80,9000 -udp 53   serve on those ports (all addresses)
//	echo -dial 10.231.0.2:7000  connect, print the server's line, exit
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	tcp := flag.String("tcp", "", "TCP ports to serve, comma separated")
	udp := flag.String("udp", "", "UDP ports to serve, comma separated")
	dial := flag.String("dial", "", "connect to this TCP address, print the answer and exit")
	flag.Parse()
	if *dial != "" {
		if err := dialOnce(*dial); err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		return
	}
	host, _ := os.Hostname()
	n := 0
	for _, p := range split(*tcp) {
		l, err := net.Listen("tcp", ":"+p)
		if err != nil {
			fatal(err)
		}
		go serveTCP(l, host)
		n++
	}
	for _, p := range split(*udp) {
		c, err := net.ListenPacket("udp", ":"+p)
		if err != nil {
			fatal(err)
		}
		go serveUDP(c, host)
		n++
	}
	if n == 0 {
		fatal(fmt.Errorf("nothing to serve: give -tcp or -udp"))
	}
	fmt.Println("echo: serving")
	select {}
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func serveTCP(l net.Listener, host string) {
	for {
		c, err := l.Accept()
		if err != nil {
			fatal(err)
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "%s %s\n", c.RemoteAddr(), host)
		}()
	}
}

func serveUDP(c net.PacketConn, host string) {
	buf := make([]byte, 2048)
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			fatal(err)
		}
		c.WriteTo([]byte(fmt.Sprintf("%s %s\n", from, host)), from)
	}
}

func dialOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	fmt.Print(line)
	return nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "echo:", err)
	os.Exit(1)
}
