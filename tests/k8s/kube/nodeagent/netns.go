package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// inNetns runs f on a locked OS thread that has joined the network namespace at path; sockets
// that f opens stay in that namespace. The thread goes back to its own namespace afterwards
// (and is thrown away if it cannot).
func inNetns(path string, f func() error) error {
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer own.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("joining %s: %w", path, err)
	}
	ferr := f()
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it ends with this goroutine, never serving another.
		klog.ErrorS(err, "could not return a thread to its network namespace")
		return ferr
	}
	runtime.UnlockOSThread()
	return ferr
}

// dialIn connects to address from inside the network namespace at path.
func dialIn(ctx context.Context, path, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(path, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// listenIn binds a TCP listener inside the network namespace at path.
func listenIn(path, address string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(path, func() error {
		var err error
		l, err = net.Listen("tcp", address)
		return err
	})
	return l, err
}

// startForward forwards connections to listen (in the host's namespace) to target inside the
// namespace at path, until ctx ends.
func startForward(ctx context.Context, listen, path, target string) error {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("binding the API forward on %s: %w", listen, err)
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				out, err := dialIn(dctx, path, "tcp", target)
				cancel()
				if err != nil {
					klog.V(2).InfoS("API forward: dial failed", "target", target, "err", err)
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(out, in); closeWrite(out); done <- struct{}{} }()
				go func() { io.Copy(in, out); closeWrite(in); done <- struct{}{} }()
				<-done
				<-done
			}()
		}
	}()
	return nil
}

func closeWrite(c net.Conn) {
	if t, ok := c.(*net.TCPConn); ok {
		t.CloseWrite()
	}
}

// ip runs `ip ARGS...` and returns its error with stderr.
func ip(args ...string) error {
	return runCmd("ip", args...)
}

func runCmd(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// listNetns returns the names of all named network namespaces.
func listNetns() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// ipPool hands out the addresses first..last (IPv4).
type ipPool struct {
	first, last uint32
	used        map[uint32]bool
}

func newIPPool(first, last string) (*ipPool, error) {
	f, l := net.ParseIP(first).To4(), net.ParseIP(last).To4()
	if f == nil || l == nil {
		return nil, fmt.Errorf("pod range %s-%s: not IPv4 addresses", first, last)
	}
	p := &ipPool{first: ip4(f), last: ip4(l), used: map[uint32]bool{}}
	if p.first > p.last {
		return nil, fmt.Errorf("pod range %s-%s is empty", first, last)
	}
	return p, nil
}

func ip4(b net.IP) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func (p *ipPool) take() (net.IP, error) {
	for a := p.first; a <= p.last; a++ {
		if !p.used[a] {
			p.used[a] = true
			return net.IPv4(byte(a>>24), byte(a>>16), byte(a>>8), byte(a)).To4(), nil
		}
	}
	return nil, fmt.Errorf("the pod range is exhausted")
}

func (p *ipPool) release(addr net.IP) {
	if v4 := addr.To4(); v4 != nil {
		delete(p.used, ip4(v4))
	}
}
