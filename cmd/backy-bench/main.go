// Command backy-bench measures the backy binary against plain cp on this
// machine, in one run: random data (backup, unchanged re-backup, restore),
// zeros (written and sparse), and a real ext4 image changed a little
// (full, hinted differential and unhinted backups, restore). It prints a
// table of figures (-json: a JSON object) and the targets they meet or miss.
// It exits non-zero on an error or a data mismatch only, never because a
// target is missed.
//
//	go run ./cmd/backy-bench -backy bin/backy [-size BYTES] [-runs N] [-dir DIR] [-keep] [-json] [-skip-ext4]
package main

import (
	"github.com/backy/backy/blockstore/backend/s3/s3test"

	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	backy := flag.String("backy", "", "path of the backy binary to measure (required)")
	dir := flag.String("dir", "", "parent of the work directory, on the disk to measure (default: "+os.TempDir()+")")
	size := flag.Int64("size", 1<<30, "bytes of every test file and image; a multiple of 4 MiB")
	runs := flag.Int("runs", 3, "times every timed step is repeated (median and min-max are reported)")
	asJSON := flag.Bool("json", false, "print a JSON object instead of the table")
	skipExt4 := flag.Bool("skip-ext4", false, "skip the ext4 image figures")
	skipS3 := flag.Bool("skip-s3", false, "skip the S3 figures (a local versitygw, built on first use)")
	skipNBD := flag.Bool("skip-nbd", false, "skip the NBD figure (nbdcopy from libnbd-bin through backy nbd)")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	if *backy == "" || flag.NArg() > 0 || *runs < 1 || *size < blockSize || *size%blockSize != 0 {
		fmt.Fprintln(os.Stderr, "backy-bench: -backy PATH is required, -runs at least 1, -size a positive multiple of 4 MiB (4194304)")
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *backy, *dir, *size, *runs, *asJSON, *skipExt4, *skipS3, *skipNBD, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "backy-bench: FAILED:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, backy, parent string, size int64, runs int, asJSON, skipExt4, skipS3, skipNBD, keep bool) error {
	path, err := exec.LookPath(backy)
	if err == nil {
		path, err = filepath.Abs(path)
	}
	if err != nil {
		return fmt.Errorf("-backy: %w", err)
	}
	if parent == "" {
		parent = os.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "backy-bench-")
	if err != nil {
		return err
	}
	b := &bench{ctx: ctx, backy: path, dir: dir, size: size, runs: runs, start: time.Now(), nbd: !skipNBD}
	if keep {
		defer fmt.Fprintln(os.Stderr, "backy-bench: kept the work directory", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	if err := checkSpace(dir, size); err != nil {
		return err
	}
	b.rep = &report{Started: b.start.UTC(), Size: size, Runs: runs, Dir: dir, Backy: path, Machine: machineFacts()}
	res, err := b.command(nil, path, "version")
	if err != nil {
		return err
	}
	b.rep.BackyVersion = strings.TrimSpace(string(res.out))
	b.drop, b.rep.Caches = cachePolicy()
	b.rep.CachesDropped = b.drop
	b.logf("work dir %s; %s", dir, b.rep.Caches)

	if !skipS3 {
		bin, err := s3test.Install()
		if err != nil {
			return fmt.Errorf("the S3 server for the S3 figures (or use -skip-s3): %w", err)
		}
		if b.s3, err = s3test.Launch(bin, b.path("s3-server")); err != nil {
			return fmt.Errorf("starting the S3 server (or use -skip-s3): %w", err)
		}
		defer b.s3.Kill()
		b.logf("S3 server %s at %s", s3test.Version, b.s3.Endpoint)
	}
	if err := b.random(); err != nil {
		return err
	}
	if err := b.zeros(); err != nil {
		return err
	}
	if !skipExt4 {
		if err := b.ext4(); err != nil {
			return err
		}
	}
	b.rep.Machine.LoadEnd = loadavg()
	b.rep.Seconds = time.Since(b.start).Seconds()
	b.rep.targets()
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(b.rep)
	}
	b.rep.print()
	return nil
}

// checkSpace fails early when the work directory cannot hold what the
// benchmark writes at once (source, copy, store and restored file).
func checkSpace(dir string, size int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return err
	}
	if free, need := int64(st.Bavail)*st.Bsize, size*9/2; free < need {
		return fmt.Errorf("%s has %s free, the benchmark needs about %s (4.5x -size)", dir, mib(free), mib(need))
	}
	return nil
}

// cachePolicy says whether the page cache can be dropped before timed steps.
func cachePolicy() (bool, string) {
	const how = "sync; echo 3 > /proc/sys/vm/drop_caches"
	if os.Geteuid() != 0 {
		return false, "caches NOT dropped (not root): warm-cache figures"
	}
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return false, fmt.Sprintf("caches NOT dropped (%v): warm-cache figures", err)
	}
	return true, "caches dropped before every timed step (" + how + "): cold-cache figures"
}

type machine struct {
	NProc     int    `json:"nproc"`
	Go        string `json:"go"`
	Kernel    string `json:"kernel"`
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

func machineFacts() machine {
	kernel, _ := os.ReadFile("/proc/version")
	return machine{
		NProc:     runtime.NumCPU(),
		Go:        runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		Kernel:    strings.TrimSpace(string(kernel)),
		LoadStart: loadavg(),
	}
}

// loadavg returns the 1, 5 and 15 minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

type report struct {
	Started       time.Time `json:"started"`
	Seconds       float64   `json:"duration_seconds"`
	Machine       machine   `json:"machine"`
	Backy         string    `json:"backy"`
	BackyVersion  string    `json:"backy_version"`
	Size          int64     `json:"size_bytes"`
	Runs          int       `json:"runs"`
	Dir           string    `json:"work_dir"`
	CachesDropped bool      `json:"caches_dropped"`
	Caches        string    `json:"caches"`
	Ext4          *ext4Info `json:"ext4,omitempty"`
	Rows          []*row    `json:"figures"`
	Targets       []target  `json:"targets"`
}

type target struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Text  string  `json:"text"`
	Met   bool    `json:"met"`
}

// row adds a figure to the report.
func (rep *report) row(name string, bytes int64) *row {
	r := &row{Name: name, Bytes: bytes}
	rep.Rows = append(rep.Rows, r)
	return r
}

func (rep *report) find(name string) *row {
	for _, r := range rep.Rows {
		if r.Name == name && len(r.Seconds) > 0 {
			return r
		}
	}
	return nil
}

// targets evaluates the team's targets; they are reported, not asserted.
func (rep *report) targets() {
	cp, cps, bk, rs := rep.find("cp random"), rep.find("cp+sync random"), rep.find("backup random"), rep.find("restore random")
	if cp != nil && cps != nil && bk != nil {
		x := cp.Median / bk.Median
		rep.Targets = append(rep.Targets, target{"backup random >= 0.5x cp speed", x,
			fmt.Sprintf("%.2fx cp speed (%.2fx cp+sync speed)", x, cps.Median/bk.Median), x >= 0.5})
	}
	for _, name := range []string{"backup zeros (written)", "backup zeros (sparse file)"} {
		if r := rep.find(name); r != nil {
			rep.Targets = append(rep.Targets, target{"zeros >= 2 GB/s " + strings.TrimPrefix(name, "backup zeros "), r.gbps(),
				fmt.Sprintf("%.2f GB/s", r.gbps()), r.gbps() >= 2})
		}
	}
	if bk != nil && rs != nil {
		rep.Targets = append(rep.Targets, target{"restore >= backup (random)", rs.MiBps / bk.MiBps,
			fmt.Sprintf("restore %.0f MiB/s, backup %.0f MiB/s", rs.MiBps, bk.MiBps), rs.MiBps >= bk.MiBps})
	}
}

func (rep *report) print() {
	m := rep.Machine
	fmt.Printf("backy-bench %s, took %.0f s\n", rep.Started.Format(time.RFC3339), rep.Seconds)
	fmt.Printf("machine:  %d CPUs, %s\n", m.NProc, m.Go)
	fmt.Printf("kernel:   %s\n", m.Kernel)
	fmt.Printf("load avg: %s at start, %s at end (shared machine)\n", m.LoadStart, m.LoadEnd)
	fmt.Printf("backy:    %s (%s)\n", rep.BackyVersion, rep.Backy)
	fmt.Printf("setup:    %s (%d bytes) per figure, %d run(s) per step, median and min-max; work dir %s\n", mib(rep.Size), rep.Size, rep.Runs, rep.Dir)
	fmt.Printf("caches:   %s\n", rep.Caches)
	if e := rep.Ext4; e != nil {
		fmt.Printf("ext4:     %s staged in %d entries (%d hard links, %d copies), mkfs.ext4 %.0f s; changed: debugfs wrote %d files from /etc and removed %s (%d blocks), %d block(s) overwritten (1%% of %d) = %d of %d blocks hinted (%.1f%%)\n",
			mib(e.StagedBytes), e.StagedEntries, e.HardLinked, e.Copied, e.MkfsSeconds, len(e.DebugfsWrites), e.DebugfsRemove,
			e.DebugfsBlocks, len(e.Overwritten), e.Blocks, len(e.ChangedBlocks), e.Blocks, 100*float64(len(e.ChangedBlocks))/float64(e.Blocks))
	}
	fmt.Println()
	rows := [][]string{{"FIGURE", "MiB/s", "MIN-MAX", "SECONDS", "RSS MiB", "TIME RATIOS", "NOTE"}}
	for _, r := range rep.Rows {
		var ratios []string
		for _, x := range r.Ratios {
			ratios = append(ratios, fmt.Sprintf("%.2fx %s", x.X, x.Of))
		}
		rows = append(rows, []string{r.Name, rate(r.MiBps), rate(r.MinMiBps) + "-" + rate(r.MaxMiBps),
			fmt.Sprintf("%.2f", r.Median), fmt.Sprintf("%.1f", r.RSSMiB), strings.Join(ratios, ", "), r.Note})
	}
	table(rows, []bool{false, true, true, true, true, false, false})
	fmt.Println("\nMiB = 2^20 bytes; TIME RATIOS = median time / median time of the named figure; RSS = peak resident set of the process")
	fmt.Println("\nTARGETS (reported, not asserted)")
	var trows [][]string
	for _, t := range rep.Targets {
		verdict := "met"
		if !t.Met {
			verdict = "MISSED"
		}
		trows = append(trows, []string{"  " + t.Name, verdict, t.Text})
	}
	table(trows, []bool{false, false, false})
}

// table prints rows with aligned columns; right[i] right-aligns column i.
func table(rows [][]string, right []bool) {
	width := make([]int, len(right))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range rows {
		var sb strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-len(c))
			if right[i] {
				sb.WriteString(pad + c)
			} else {
				sb.WriteString(c + pad)
			}
			sb.WriteString("  ")
		}
		fmt.Println(strings.TrimRight(sb.String(), " "))
	}
}

func rate(mibps float64) string {
	if mibps >= 100 {
		return fmt.Sprintf("%.0f", mibps)
	}
	return fmt.Sprintf("%.1f", mibps)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/mibBytes) }
