package metastore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// interrupt, when set, ends every wait for a lock held by another process.
var interrupt atomic.Pointer[<-chan struct{}]

// SetInterrupt makes every wait for a lock that another process holds
// (the store, writers and create locks) end when done is closed, with an
// error wrapping context.Canceled; the CLI passes the Done channel of the
// context that Ctrl-C and SIGTERM cancel. Without it, such a wait ends only
// when the lock is released. Like SetHolderName, it is set once per
// process.
func SetInterrupt(done <-chan struct{}) { interrupt.Store(&done) }

// flock applies the flock(2) operation how to f. A waiting request
// (without LOCK_NB) polls while an interrupt is set, so that it can end:
// a blocked flock(2) is restarted after every signal and would never see
// one.
func flock(f *os.File, how int) error {
	var done <-chan struct{}
	if p := interrupt.Load(); p != nil {
		done = *p
	}
	if how&syscall.LOCK_NB != 0 || done == nil {
		return syscall.Flock(int(f.Fd()), how)
	}
	delay := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-done:
			t.Stop()
			return fmt.Errorf("interrupted while waiting for another backy process to release it: %w", context.Canceled)
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}
