package main

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestHumanHandler(t *testing.T) {
	var b strings.Builder
	log := slog.New(newHumanHandler(&b, slog.LevelInfo))
	log.Debug("not shown")
	log.Info("backup started", "version", "V1", "size", 4096)
	log.Warn("waiting for the writers lock", "reason", errors.New("an orphan sweep is running"))
	log.With("volume", "vm-1").WithGroup("g").Error("two\nlines", "k", "v", slog.Group("sub", "x", 1))
	log.Warn("no attributes")
	want := "backy: info: backup started (version: V1, size: 4096)\n" +
		"backy: warning: waiting for the writers lock (reason: an orphan sweep is running)\n" +
		"backy: error: two lines (volume: vm-1, g.k: v, g.sub.x: 1)\n" +
		"backy: warning: no attributes\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
