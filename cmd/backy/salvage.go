package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/transfer"
)

// salvageCommand is the hidden first argument with which rebuild-metastore
// runs this binary as a child to read the old metastore (which may be
// damaged so badly that bbolt crashes the process reading it):
//
//	backy __salvage-metastore survey PATH          → transfer.Survey as JSON
//	backy __salvage-metastore export PATH DIR UID… → {uid: why not} as JSON
//
// It is not a command for operators: main dispatches it before the CLI.
const salvageCommand = "__salvage-metastore"

// runSalvage is the child's side. It reads no configuration.
func runSalvage(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var out any
	var err error
	switch {
	case len(args) == 2 && args[0] == "survey":
		out, err = transfer.InProcess{}.Survey(ctx, args[1])
	case len(args) >= 3 && args[0] == "export":
		out, err = transfer.InProcess{}.Export(ctx, args[1], args[3:], args[2])
	default:
		err = fmt.Errorf("usage: backy %s survey PATH, or export PATH DIR UID (one or more)", salvageCommand)
	}
	if err == nil {
		err = json.NewEncoder(stdout).Encode(out)
	}
	if err != nil {
		fmt.Fprintln(stderr, strings.ReplaceAll(err.Error(), "\n", " "))
		return exitFailure
	}
	return exitOK
}

// childSalvager is the transfer.Salvager of rebuild-metastore: it reads the
// old metastore in child processes of this binary, so that a damaged file
// that crashes bbolt (beyond the panics transfer.InProcess recovers)
// costs only the child.
type childSalvager struct {
	exe string
}

// newSalvager returns the child salvager, or the in-process one when this
// binary cannot be found again.
func newSalvager() transfer.Salvager {
	exe, err := os.Executable()
	if err != nil {
		return transfer.InProcess{}
	}
	return childSalvager{exe: exe}
}

func (c childSalvager) run(ctx context.Context, path string, out any, args ...string) error {
	cmd := exec.CommandContext(ctx, c.exe, append([]string{salvageCommand}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if err == nil {
		err = json.Unmarshal(so.Bytes(), out)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A crash prints a stack trace: its first line says what.
		msg, _, _ := strings.Cut(strings.TrimSpace(se.String()), "\n")
		return fmt.Errorf("%w: reading the old metastore %s failed (%v): %s", metastore.ErrCorrupt, path, err, msg)
	}
	return nil
}

// Survey implements transfer.Salvager.
func (c childSalvager) Survey(ctx context.Context, path string) (*transfer.Survey, error) {
	var sv transfer.Survey
	if err := c.run(ctx, path, &sv, "survey", path); err != nil {
		return nil, err
	}
	return &sv, nil
}

// Export implements transfer.Salvager. If the child fails on several
// versions, each is read again in a child of its own, so that one whose
// metadata crashes the reader costs only itself.
func (c childSalvager) Export(ctx context.Context, path string, uids []string, dir string) (map[string]string, error) {
	why := map[string]string{}
	err := c.run(ctx, path, &why, append([]string{"export", path, dir}, uids...)...)
	if err == nil || len(uids) == 1 || ctx.Err() != nil {
		return why, err
	}
	why = map[string]string{}
	for _, uid := range uids {
		if _, err := os.Stat(transfer.ExportFile(dir, uid)); err == nil {
			continue // written completely before the failure
		}
		one := map[string]string{}
		if err := c.run(ctx, path, &one, "export", path, dir, uid); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			one[uid] = err.Error()
		}
		for k, v := range one {
			why[k] = v
		}
	}
	return why, nil
}
