package metastore

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	berrors "go.etcd.io/bbolt/errors"
)

// TestFlockSharedTimeout: precheck's shared lock waits for a writer's
// exclusive one for at most its timeout (a real-time timer, not a reading
// of the clock), and gets the lock as soon as the writer lets go.
func TestFlockSharedTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open := func() *os.File {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	writer := open()
	if err := syscall.Flock(int(writer.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := flockShared(open(), 100*time.Millisecond); !errors.Is(err, berrors.ErrTimeout) {
		t.Fatalf("flockShared under an exclusive lock = %v, want ErrTimeout", err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = syscall.Flock(int(writer.Fd()), syscall.LOCK_UN)
		close(released)
	}()
	if err := flockShared(open(), 0); err != nil { // 0: as long as it takes
		t.Fatalf("flockShared once the writer lets go = %v", err)
	}
	<-released
	if err := flockShared(open(), time.Hour); err != nil {
		t.Fatalf("flockShared beside another shared lock = %v", err)
	}
}
