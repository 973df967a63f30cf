// Command backy-testprogress runs 'go test -json ARGS...' and shows its
// progress for people, so that a long run is never silent: a line per
// package as it finishes (ok, FAIL, no test files), every minute the
// packages and top-level tests still running, and in full the output of
// every failed test, failed package and failed build, as soon as it
// fails. It exits with go test's exit status. 'make test' runs it.
//
//	go run ./cmd/backy-testprogress [go test flags] [packages]
//
// The go command is $GO, else "go".
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.Command(goCmd, append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "backy-testprogress:", err)
		os.Exit(2)
	}
	// Ctrl-C reaches go test (same process group); wait for it to finish.
	signal.Ignore(os.Interrupt, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "backy-testprogress:", err)
		os.Exit(2)
	}
	r := newReporter(os.Stdout, time.Now)
	events := make(chan []byte)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for sc.Scan() {
			events <- append([]byte(nil), sc.Bytes()...)
		}
		close(events)
	}()
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
loop:
	for {
		select {
		case line, ok := <-events:
			if !ok {
				break loop
			}
			r.line(line)
		case <-tick.C:
			r.heartbeat()
		}
	}
	werr := cmd.Wait()
	r.summary()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(werr, &ee):
		code = ee.ExitCode()
		if code < 0 {
			code = 1 // killed by a signal
		}
	case werr != nil:
		fmt.Fprintln(os.Stderr, "backy-testprogress:", werr)
		code = 2
	}
	if code == 0 && r.failed > 0 {
		code = 1
	}
	os.Exit(code)
}

// event is a line of 'go test -json': a TestEvent or a BuildEvent.
type event struct {
	Time        time.Time
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	ImportPath  string
	FailedBuild string
}

// pkgState is a package under test.
type pkgState struct {
	start   time.Time
	output  strings.Builder             // output not of a test
	tests   map[string]*strings.Builder // output of running top-level tests
	running map[string]bool             // top-level tests running (not paused)
}

type reporter struct {
	w       io.Writer
	now     func() time.Time
	start   time.Time
	pkgs    map[string]*pkgState
	ok      int
	failed  int
	skipped int
}

func newReporter(w io.Writer, now func() time.Time) *reporter {
	return &reporter{w: w, now: now, start: now(), pkgs: map[string]*pkgState{}}
}

// line handles one line of go test's standard output.
func (r *reporter) line(b []byte) {
	var ev event
	if err := json.Unmarshal(b, &ev); err != nil || ev.Action == "" {
		fmt.Fprintln(r.w, string(b)) // not an event: pass it on
		return
	}
	r.event(ev)
}

func (r *reporter) pkg(name string) *pkgState {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgState{start: r.now(), tests: map[string]*strings.Builder{}, running: map[string]bool{}}
		r.pkgs[name] = p
	}
	return p
}

func (r *reporter) event(ev event) {
	switch ev.Action {
	case "build-output":
		fmt.Fprint(r.w, ev.Output)
		return
	case "build-fail":
		return // reported by the package's fail event
	}
	p := r.pkg(ev.Package)
	top, _, _ := strings.Cut(ev.Test, "/")
	if ev.Test != "" {
		switch ev.Action {
		case "run":
			if top == ev.Test {
				p.tests[top] = &strings.Builder{}
				p.running[top] = true
			}
		case "pause":
			delete(p.running, ev.Test)
		case "cont":
			if top == ev.Test {
				p.running[top] = true
			}
		case "output":
			if b := p.tests[top]; b != nil {
				b.WriteString(ev.Output)
			}
		case "pass", "skip":
			if top == ev.Test {
				delete(p.tests, top)
				delete(p.running, top)
			}
		case "fail":
			if top == ev.Test {
				if b := p.tests[top]; b != nil {
					fmt.Fprint(r.w, b.String())
				}
				delete(p.tests, top)
				delete(p.running, top)
			}
		}
		return
	}
	switch ev.Action {
	case "output":
		p.output.WriteString(ev.Output)
	case "pass":
		r.ok++
		fmt.Fprintf(r.w, "ok    %s  %s\n", ev.Package, seconds(ev.Elapsed))
		delete(r.pkgs, ev.Package)
	case "skip":
		r.skipped++
		fmt.Fprintf(r.w, "-     %s  [no test files]\n", ev.Package)
		delete(r.pkgs, ev.Package)
	case "fail":
		r.failed++
		// Tests still buffered did not report their end (a panic, a
		// timeout): their output says why.
		names := make([]string, 0, len(p.tests))
		for n := range p.tests {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprint(r.w, p.tests[n].String())
		}
		// The package's own output, but for go test's summary lines
		// ("FAIL", "FAIL\tpkg 1.2s"), which the line below replaces.
		for _, l := range strings.SplitAfter(p.output.String(), "\n") {
			if l != "" && strings.TrimSpace(l) != "FAIL" && !strings.HasPrefix(l, "FAIL\t"+ev.Package) {
				fmt.Fprint(r.w, l)
			}
		}
		if ev.FailedBuild != "" {
			fmt.Fprintf(r.w, "FAIL  %s  [build failed]\n", ev.Package)
		} else {
			fmt.Fprintf(r.w, "FAIL  %s  %s\n", ev.Package, seconds(ev.Elapsed))
		}
		delete(r.pkgs, ev.Package)
	}
}

// heartbeat says what is still running.
func (r *reporter) heartbeat() {
	names := make([]string, 0, len(r.pkgs))
	for n := range r.pkgs {
		names = append(names, n)
	}
	if len(names) == 0 {
		return
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		tests := make([]string, 0, len(r.pkgs[n].running))
		for t := range r.pkgs[n].running {
			tests = append(tests, t)
		}
		sort.Strings(tests)
		s := n
		if len(tests) > 3 {
			tests = append(tests[:3], fmt.Sprintf("+%d more", len(tests)-3))
		}
		if len(tests) > 0 {
			s += " (" + strings.Join(tests, ", ") + ")"
		}
		parts = append(parts, s)
	}
	fmt.Fprintf(r.w, "...   %s: still running %s\n", r.now().Sub(r.start).Round(time.Second), strings.Join(parts, "; "))
}

func (r *reporter) summary() {
	fmt.Fprintf(r.w, "%d package(s) ok, %d failed, %d without tests, in %s\n", r.ok, r.failed, r.skipped, r.now().Sub(r.start).Round(time.Second))
}

func seconds(s float64) string { return fmt.Sprintf("%.1fs", s) }
