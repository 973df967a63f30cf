package metastore

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestLockHolderHelper is not a test: run by TestLockNamesLiveHolder as
// another process, it locks the file BACKY_TEST_LOCK_FILE (shared, or
// exclusive if BACKY_TEST_LOCK_MODE=exclusive), says "locked" and holds the
// lock until its standard input closes.
func TestLockHolderHelper(t *testing.T) {
	path := os.Getenv("BACKY_TEST_LOCK_FILE")
	if path == "" {
		t.Skip("helper process only")
	}
	lk, err := lockFile(path, os.Getenv("BACKY_TEST_LOCK_MODE") == "exclusive", false, "helper")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	lk.Unlock()
	os.Exit(0)
}

// lockHelper starts TestLockHolderHelper holding path and returns its pid
// once it holds the lock; the lock is released when the test ends.
func lockHelper(t *testing.T, path string, exclusive bool) int {
	t.Helper()
	mode := "shared"
	if exclusive {
		mode = "exclusive"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHolderHelper$")
	cmd.Env = append(os.Environ(), "BACKY_TEST_LOCK_FILE="+path, "BACKY_TEST_LOCK_MODE="+mode)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "locked" {
		t.Fatalf("lock helper: %q %v", line, err)
	}
	return cmd.Process.Pid
}

// TestLockNamesLiveHolder: a version that cannot be locked names the
// processes that hold it now, never a holder that finished long ago
// (issue 13 item 17: 'rm' of a version served by 'backy nbd' named the
// backup that had made it).
func TestLockNamesLiveHolder(t *testing.T) {
	db := newTestDB(t)
	v := newVersion(t, db, "vol")
	path := db.versionLockPath(v.UID)

	// An exclusive holder clears its line when it unlocks.
	w, err := db.LockVersion(v.UID, Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	w.Unlock()
	if b, err := os.ReadFile(path); err != nil || len(b) != 0 {
		t.Errorf("after an exclusive holder unlocked, the lock file holds %q (%v), want nothing", b, err)
	}

	// A shared holder in another process, and the line of an exclusive
	// holder that was killed long ago (it had no chance to clear it).
	stale := "pid 1, backy backup, since 2001-01-01T00:00:00Z"
	if err := os.WriteFile(path, []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	pid := lockHelper(t, path, false)
	_, err = db.LockVersion(v.UID, Exclusive)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("exclusive lock of a version another process reads: %v, want ErrLocked", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "backy backup") || strings.Contains(msg, "pid 1,") {
		t.Errorf("the error names a holder that is gone: %s", msg)
	}
	want := fmt.Sprintf("pid %d, ", pid)
	if !strings.Contains(msg, want) || !strings.Contains(msg, "TestLockHolderHelper") || !strings.Contains(msg, "since ") {
		t.Errorf("the error should name the live holder (%q, its command line and start): %s", want, msg)
	}
	// Its start time is about now, not the stale line's.
	if i := strings.Index(msg, "since "); i >= 0 {
		ts := strings.TrimRight(strings.Fields(msg[i+len("since "):])[0], ");")
		if at, err := time.Parse(time.RFC3339, ts); err != nil || time.Since(at) > time.Hour || time.Until(at) > time.Hour {
			t.Errorf("holder start %q (%v): want about now", ts, err)
		}
	}
}

// TestLockNamesExclusiveHolder: an exclusive holder in another process is
// named by the line it recorded.
func TestLockNamesExclusiveHolder(t *testing.T) {
	db := newTestDB(t)
	v := newVersion(t, db, "vol")
	pid := lockHelper(t, db.versionLockPath(v.UID), true)
	_, err := db.LockVersion(v.UID, Shared)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("shared lock of a version another process writes: %v, want ErrLocked", err)
	}
	if want := fmt.Sprintf("(pid %d, backy, since ", pid); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q: want the holder's line %q", err, want)
	}
}
