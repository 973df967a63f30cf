package archtest

import (
	"go/parser"
	"go/token"
	"strings"
	"testing"
)

// TestNoDirectTime (issue 14 item 4): no library file reads the time but
// through internal/clock.
func TestNoDirectTime(t *testing.T) {
	m := loadRepo(t)
	for _, f := range CheckTime(m) {
		t.Errorf("%s", f)
	}
	for name, why := range TimeAllowed {
		if why == "" {
			t.Errorf("TimeAllowed[%s] gives no reason", name)
		}
	}
}

// TestCheckTimeFile: the checker on synthetic files.
func TestCheckTimeFile(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      int
	}{
		{"call", `package p; import "time"; func f() { _ = time.Now() }`, 1},
		{"since", `package p; import "time"; func f(t0 time.Time) { _ = time.Since(t0) }`, 1},
		{"until", `package p; import "time"; func f(t0 time.Time) { _ = time.Until(t0) }`, 1},
		{"method value", `package p; import "time"; var now = time.Now`, 1},
		{"renamed import", `package p; import tm "time"; func f() { _ = tm.Now().Add(tm.Second) }`, 1},
		{"dot import", `package p; import . "time"; func f() { _ = Now() }`, 1},
		{"several", `package p; import "time"; func f() { a := time.Now(); _ = time.Since(a); _ = time.Until(a) }`, 3},
		{"timers are fine", `package p; import "time"; func f() { t := time.NewTimer(time.Second); <-t.C; time.Sleep(1); _ = time.Unix(0, 0) }`, 0},
		{"a clock is fine", `package p; import ("time"; "m/internal/clock"); func f(c clock.Clock) time.Time { _ = c.Since(c.Now()); return clock.Deadline(time.Second) }`, 0},
		{"a local named time", `package p; type fake struct{}; func (fake) Now() int { return 0 }; func f() { time := fake{}; _ = time.Now() }`, 0},
		{"shadowed package", `package p; import "time"; type fake struct{}; func (fake) Now() time.Time { return time.Time{} }; func f() { time := fake{}; _ = time.Now() }`, 0},
		{"blank import", `package p; import _ "time"`, 0},
		{"no time import", `package p; func f(time interface{ Now() int }) { _ = time.Now() }`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "x.go", tc.src, 0)
			if err != nil {
				t.Fatal(err)
			}
			got := CheckTimeFile(fset, f)
			if len(got) != tc.want {
				t.Fatalf("%d findings %v, want %d", len(got), got, tc.want)
			}
			for _, g := range got {
				if !strings.Contains(g.String(), "x.go:1:") || !strings.Contains(g.Msg, "clock") {
					t.Errorf("finding %q does not say where and what to do", g)
				}
			}
		})
	}
}

// TestCheckTimeOnTree: a deliberate time.Now in a library package of a
// module on disk fails the check; the same in cmd/, internal/clock, a test
// file or testdata does not.
func TestCheckTimeOnTree(t *testing.T) {
	const bad = "package %s\n\nimport \"time\"\n\nvar Started = time.Now()\n"
	src := func(pkg string) string { return strings.Replace(bad, "%s", pkg, 1) }
	root := writeTree(t, map[string]string{
		"go.mod":                        "module example.com/m\n",
		"versions/backup/backup.go":     src("backup"),
		"versions/backup/ok.go":         "package backup\n\nimport \"time\"\n\nvar D = time.Second\n",
		"versions/backup/x_test.go":     src("backup"),
		"versions/backup/testdata/t.go": src("t"),
		"cmd/backy/main.go":             src("main"),
		"internal/clock/clock.go":       src("clock"),
		"internal/clockwork/c.go":       src("clockwork"),
	})
	m, err := Load(root)
	if err != nil {
		t.Fatal(err)
	}
	got := CheckTime(m)
	if len(got) != 2 || !strings.HasSuffix(got[0].Pos.Filename, "internal/clockwork/c.go") || !strings.HasSuffix(got[1].Pos.Filename, "versions/backup/backup.go") {
		t.Fatalf("findings %v, want internal/clockwork/c.go and versions/backup/backup.go", got)
	}
}
