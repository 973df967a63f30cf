// Package ui renders backy's output for people and machines: aligned
// tables, JSON on stdout, byte counts, and a progress line on stderr when
// stderr is a terminal. It holds no logic of its own.
package ui

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/backy/backy/versions"
)

// JSON writes v as indented JSON followed by a newline.
func JSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Table writes rows under a header, columns aligned with two spaces.
func Table(w io.Writer, header []string, rows [][]string) error {
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for i, c := range r {
			if n := utf8.RuneCountInString(c); i < len(width) && n > width[i] {
				width[i] = n
			}
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		for i, c := range cells {
			if i == len(cells)-1 {
				b.WriteString(c)
				break
			}
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)+2))
		}
		b.WriteString("\n")
	}
	line(header)
	for _, r := range rows {
		line(r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Bytes formats a byte count with binary units ("4.0 MiB").
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Progress draws a one-line progress display on a terminal, at most a few
// times a second. A nil *Progress does nothing, so callers need not check.
type Progress struct {
	w      io.Writer
	what   string
	blocks bool // counts blocks, not bytes
	now    func() time.Time
	start  time.Time
	mu     sync.Mutex
	last   time.Time
	drawn  bool
}

// NewProgress returns a progress line of bytes on f if f is a terminal,
// else nil.
func NewProgress(f *os.File, what string) *Progress {
	if !IsTerminal(f) {
		return nil
	}
	return newProgress(f, what, false, time.Now)
}

// NewBlockProgress is NewProgress for commands that count blocks
// (deep-scrub, migrate-encryption): Update takes block counts.
func NewBlockProgress(f *os.File, what string) *Progress {
	if !IsTerminal(f) {
		return nil
	}
	return newProgress(f, what, true, time.Now)
}

func newProgress(w io.Writer, what string, blocks bool, now func() time.Time) *Progress {
	return &Progress{w: w, what: what, blocks: blocks, now: now, start: now()}
}

// Update shows done of total bytes (or blocks).
func (p *Progress) Update(done, total int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Sub(p.last) < 250*time.Millisecond && done < total {
		return
	}
	p.last = now
	fmt.Fprint(p.w, "\r\033[K"+p.line(done, total, now.Sub(p.start)))
	p.drawn = true
}

// line is the text of the progress line after elapsed.
func (p *Progress) line(done, total int64, elapsed time.Duration) string {
	rate := 0.0
	if el := elapsed.Seconds(); el > 0 {
		rate = float64(done) / el
	}
	eta := "--"
	if rate > 0 && total > done {
		eta = versions.FormatDuration(time.Duration(float64(total-done) / rate * float64(time.Second)))
	}
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	if p.blocks {
		return fmt.Sprintf("%s %5.1f%%  %d / %d blocks  %.0f blocks/s  ETA %s", p.what, pct, done, total, rate, eta)
	}
	return fmt.Sprintf("%s %5.1f%%  %s / %s  %s/s  ETA %s", p.what, pct, Bytes(done), Bytes(total), Bytes(int64(rate)), eta)
}

// Done clears the progress line.
func (p *Progress) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
