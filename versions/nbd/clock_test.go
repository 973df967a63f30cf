package nbd

import (
	"testing"
	"time"

	"github.com/backy/backy/internal/clock"
)

// TestOptionsClock (issue 14 item 4): WarnInterval is measured on
// Options.Clock: a second warning about a client passes only once that
// clock has moved past the interval, however little real time went by.
func TestOptionsClock(t *testing.T) {
	clk := clock.NewFake(time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC))
	s := NewServer(nil, Options{WarnInterval: 10 * time.Second, Clock: clk})
	if ok, _ := s.warns.allow("client"); !ok {
		t.Fatal("the first warning was held back")
	}
	if ok, _ := s.warns.allow("client"); ok {
		t.Fatal("a second warning within the interval passed")
	}
	clk.Advance(10 * time.Second)
	if ok, n := s.warns.allow("client"); !ok || n != 1 {
		t.Fatalf("after the interval on the clock: allow = %v, %d held back; want true, 1", ok, n)
	}
}
