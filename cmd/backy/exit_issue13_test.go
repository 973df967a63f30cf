package main

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
)

func TestInterruptedMessage(t *testing.T) {
	canceled := fmt.Errorf("storing block 12: file backend: put: %w", context.Canceled)
	cases := []struct {
		name    string
		err     error
		command string
		signal  string
		want    string
	}{
		{"cancelled backup before a version", canceled, "backup", "Ctrl-C", "interrupted (Ctrl-C); no version was made"},
		{"the command says what it left", &leftError{canceled, "version V1 is left incomplete"}, "backup", "SIGTERM",
			"interrupted (SIGTERM); version V1 is left incomplete"},
		{"read-only command", context.Canceled, "ls", "Ctrl-C", "interrupted (Ctrl-C); nothing was changed"},
		{"enforce's own interruption", fmt.Errorf("enforce: 1 not removed: %w before V2", errInterrupted), "enforce", "",
			"interrupted; the versions listed as removed are gone, the others are untouched: run 'backy enforce' again to finish"},
		{"unknown command", context.Canceled, "frobnicate", "Ctrl-C", "interrupted (Ctrl-C)"},
		{"a failure of its own is kept", fmt.Errorf("writing: %w", syscall.EIO), "restore", "Ctrl-C", "interrupted (Ctrl-C): writing: input/output error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := &interruptedError{cause: c.err, command: c.command, signal: c.signal}
			if got := err.Error(); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
			if exitCode(err) != exitInterrupted || !errors.Is(err, errInterrupted) {
				t.Errorf("exit code %d", exitCode(err))
			}
		})
	}
	// Every command that can be interrupted says what it leaves.
	for _, c := range newApp(&env{}).Commands {
		if _, ok := interruptedLeaves[c.Name]; !ok && c.Name != "version" && c.Name != "nbd" {
			t.Errorf("interruptedLeaves has nothing for %q", c.Name)
		}
	}
}
