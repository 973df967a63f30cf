package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// nbdRound serves version uid of store with 'backy nbd --read-only' and
// times nbdcopy of it into a new file, checking its sha256: the speed of
// reading a whole version through NBD, next to 'backy restore'.
func (b *bench) nbdRound(r *row, store, uid, out, want string) error {
	nbdcopy, err := exec.LookPath("nbdcopy")
	if err != nil {
		return fmt.Errorf("nbdcopy (libnbd-bin) for the NBD figures (or use -skip-nbd): %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.backy, "nbd", "--read-only", "--listen", addr)
	cmd.Env = append(os.Environ(), "BACKY_HOME="+store, "BACKY_CONFIG=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
	}()
	// The server says where it listens once it does.
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		said := false
		for sc.Scan() {
			if !said && strings.Contains(sc.Text(), "serving versions on") {
				said = true
				ready <- true
			}
		}
		if !said {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			return fmt.Errorf("backy nbd exited before it listened")
		}
	case <-time.After(30 * time.Second):
		return fmt.Errorf("backy nbd did not listen within 30 s")
	}
	_ = os.Remove(out)
	if _, err := b.step(r, func() (result, error) { return b.command(nil, nbdcopy, "nbd://"+addr+"/"+uid, out) }); err != nil {
		return err
	}
	sums, err := b.coldHash(out)
	if err != nil {
		return err
	}
	if sums[0] != want {
		return fmt.Errorf("DATA MISMATCH: %s: nbdcopy of %s has sha256 %s, the source has %s", r.Name, uid, sums[0], want)
	}
	return os.Remove(out)
}
