// Command backy is a deduplicating block store for disk and VM images:
// it backs up images block by block into a store, and restores, lists,
// removes and verifies the versions it keeps. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/backy/backy/metastore"
)

func main() {
	os.Exit(run(os.Args))
}

// run executes one command and returns its exit code. Ctrl-C (SIGINT) or
// SIGTERM cancels the context; every long operation stops cleanly on it.
func run(args []string) int {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if len(args) > 1 && args[1] == salvageCommand {
		// rebuild-metastore reading the old metastore in a child.
		return runSalvage(ctx, args[2:], os.Stdout, os.Stderr)
	}
	// Waits for locks other processes hold end on Ctrl-C too.
	metastore.SetInterrupt(ctx.Done())
	env := &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	defer env.close() // after the metrics and the error are logged
	app := newApp(env)
	err := app.RunContext(ctx, interspersed(app, args))
	if err == nil && env.unknownCommand != "" {
		err = usageErr("unknown command %q%s", env.unknownCommand, didYouMean(app, env.unknownCommand))
	}
	if err != nil && ctx.Err() != nil && !errors.Is(err, errExitCode) {
		err = interrupted(ctx, err, env.metrics.command)
	}
	code := exitCode(err)
	if merr := env.writeMetrics(code); merr != nil {
		// Monitoring that silently stops updating is worse than a failed
		// job: a successful command fails on it.
		if err == nil {
			err = merr
		} else {
			fmt.Fprintf(env.stderr, "backy: %v\n", merr)
		}
	}
	if err == nil {
		return exitOK
	}
	code = exitCode(err)
	env.reportError(err, code)
	return code
}
