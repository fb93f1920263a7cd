//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
)

// relayKinds are the I/O models, in the order the report lists them.
var relayKinds = []string{"goroutine-net", "goroutine-raw", "epoll-block", "epoll-raw", "epoll-rawreg", "epoll-poller"}

// relay is one I/O model in one process configuration.
type relay struct {
	kind  string // one of relayKinds
	procs int    // the child's GOMAXPROCS; 0 leaves Go's default (the CPU count)
}

func (r relay) label() string {
	if r.procs > 0 {
		return fmt.Sprintf("%s/P%d", r.kind, r.procs)
	}
	return r.kind
}

// childEnv, when set ("kind upstream-host:port"), makes the binary a relay
// process: it listens on a free loopback port, prints "port P gomaxprocs N"
// and relays until killed. An environment variable rather than a flag, so
// that the test binary (whose flags are the testing package's) can be a
// relay process too.
const childEnv = "IOFLOOR_RELAY"

// runChild is a relay process's main.
func runChild(spec string) int {
	kind, upstream, ok := strings.Cut(spec, " ")
	if !ok {
		fmt.Fprintf(os.Stderr, "bad %s %q\n", childEnv, spec)
		return 2
	}
	announce := func(port int) { fmt.Printf("port %d gomaxprocs %d\n", port, runtime.GOMAXPROCS(0)) }
	var err error
	switch kind {
	case "goroutine-net", "goroutine-raw":
		var ln net.Listener
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			break
		}
		announce(ln.Addr().(*net.TCPAddr).Port)
		wrap := func(c net.Conn) net.Conn { return c }
		if kind == "goroutine-raw" {
			wrap = newRawConn
		}
		err = serveGoroutines(ln, upstream, wrap)
	case "epoll-block", "epoll-raw", "epoll-rawreg", "epoll-poller":
		var lfd, port int
		if lfd, port, err = listenRaw(); err != nil {
			break
		}
		announce(port)
		err = serveEpoll(lfd, upstream, strings.TrimPrefix(kind, "epoll-"))
	default:
		err = fmt.Errorf("unknown relay %q", kind)
	}
	fmt.Fprintln(os.Stderr, "relay:", err)
	return 1
}

// relayProc is a running relay process.
type relayProc struct {
	port       int
	gomaxprocs int
	cmd        *exec.Cmd
	stderr     *bytes.Buffer
	done       chan struct{}
}

// startRelay re-executes this binary as relay r in front of upstream and
// waits for it to listen.
func startRelay(r relay, upstream string) (*relayProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMAXPROCS=") && !strings.HasPrefix(kv, childEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, childEnv+"="+r.kind+" "+upstream)
	if r.procs > 0 {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(r.procs))
	}
	p := &relayProc{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	cmd.SysProcAttr = benchutil.ChildAttr(nil)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start relay %s: %w", filepath.Base(exe), err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if _, err := fmt.Sscanf(s, "port %d gomaxprocs %d", &p.port, &p.gomaxprocs); err != nil {
			p.stop()
			return nil, fmt.Errorf("relay %s: no port (%q): %s", r.label(), s, p.stderr)
		}
	case <-time.After(10 * time.Second):
		p.stop()
		return nil, fmt.Errorf("relay %s did not start in 10s: %s", r.label(), p.stderr)
	}
	if r.procs > 0 && p.gomaxprocs != r.procs {
		p.stop()
		return nil, fmt.Errorf("relay %s runs with GOMAXPROCS %d", r.label(), p.gomaxprocs)
	}
	return p, nil
}

func (p *relayProc) pid() int { return p.cmd.Process.Pid }

// stop ends the relay; it is idempotent.
func (p *relayProc) stop() {
	select {
	case <-p.done:
	default:
		benchutil.StopProcess(p.cmd.Process, p.done, syscall.SIGTERM)
	}
}

// ctxSwitches returns the voluntary and involuntary context switches of all
// of process pid's threads so far (/proc/<pid>/task/*/status; the
// process-level status file counts its main thread only).
func ctxSwitches(pid int) (int64, error) {
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/status")
	if err != nil {
		return 0, err
	}
	if len(tasks) == 0 {
		return 0, fmt.Errorf("process %d: no tasks", pid)
	}
	var total int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // a thread that just exited
			}
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s: %w", t, err)
				}
				total += n
			}
		}
	}
	return total, nil
}
