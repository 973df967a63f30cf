package main

import (
	"crypto/rand"
	"regexp"
	"runtime/debug"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=..."
// (make build, make install: git describe).
var version = ""

// devVersion is the version of a build that says nothing better.
const devVersion = "0.1.0-dev"

func backyVersion() string {
	if version != "" {
		return version
	}
	bi, _ := debug.ReadBuildInfo()
	return buildVersion(bi).version
}

// builtFrom is what the Go toolchain recorded about the source of a build.
type builtFrom struct {
	version  string // what 'backy version' shows
	commit   string // vcs.revision, "" when not recorded
	time     string // vcs.time (RFC 3339)
	modified bool   // vcs.modified: the work tree had changes
}

// pseudoVersion matches a Go pseudo-version's tail ("v0.0.0-20261208003402-0476f7d74f80").
var pseudoVersion = regexp.MustCompile(`\d{14}-[0-9a-f]{12}(\+incompatible)?$`)

// buildVersion derives the version from the build info: a release
// version (go install .../cmd/backy@v1.2.3) as is; otherwise, when the
// build recorded its commit (go build/install in a clone stamps
// vcs.revision, vcs.time, vcs.modified), devVersion+COMMIT[.dirty], so that
// 'backy version' names the commit rather than an opaque pseudo-version.
func buildVersion(bi *debug.BuildInfo) builtFrom {
	var b builtFrom
	if bi == nil {
		b.version = devVersion
		return b
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.commit = s.Value
		case "vcs.time":
			b.time = s.Value
		case "vcs.modified":
			b.modified = s.Value == "true"
		}
	}
	v := bi.Main.Version
	switch {
	case v != "" && v != "(devel)" && !pseudoVersion.MatchString(v) && !strings.HasSuffix(v, "+dirty"):
		b.version = v
	case b.commit != "":
		b.version = devVersion + "+" + b.commit[:min(12, len(b.commit))]
		if b.modified {
			b.version += ".dirty"
		}
	case v != "" && v != "(devel)":
		b.version = v // a pseudo-version without VCS settings still names a commit
	default:
		b.version = devVersion
	}
	return b
}

var randRead = rand.Read

const exitCodesHelp = `EXIT CODES:
   0    success
   1    unexpected internal error
   64   bad command line (unknown command or flag, missing argument, unusable --from/--resume version, protected version)
   65   bad input data (malformed hints file, hints contradicted by the sanity check, source changed while read;
        deep-scrub --source: the version differs from the source, nothing marked)
   66   not found (source, version, volume, store, configuration file)
   70   integrity failure (corrupt or missing stored block, incomplete or invalid version, damaged metastore)
   71   no space left on device
   73   cannot create (restore target exists or is too small, store already exists)
   74   I/O error
   75   locked (store or version in use by another backy process; retry later)
   77   permission denied, or a wrong or missing key
   78   configuration error
   79   the store was written by a newer backy
   80   scrub or deep-scrub found damage (listed; blocks and versions now marked invalid)
   130  interrupted (the message says what the command left behind)`

// jsonFlag is accepted globally and after every command.
var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON on stdout (logs stay on stderr)"}

// metricsFlag, like jsonFlag, is accepted globally and after every command.
var metricsFlag = &cli.StringFlag{Name: "metrics-file", Usage: "after the command, update Prometheus metrics in `FILE` (atomically; for node_exporter's textfile collector, e.g. /var/lib/node_exporter/backy.prom)"}

// configFlag and logLevelFlag, like jsonFlag, are accepted globally and
// after every command ("backy init -c /etc/backy.cfg").
var (
	configFlag   = &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "configuration `FILE` (default: $BACKY_CONFIG, else the built-in default store)"}
	logLevelFlag = &cli.StringFlag{Name: "log-level", Usage: "stderr log level: debug, info, warn, error (default warn; log_file gets log_level)"}
)

// flagString returns the value of a string flag given globally or to the
// command (the command's unset flag must not hide the global one).
func flagString(c *cli.Context, name string) string {
	for _, l := range c.Lineage() {
		if l.IsSet(name) {
			return l.String(name)
		}
	}
	return ""
}

func newApp(e *env) *cli.App {
	app := &cli.App{
		Name:      "backy",
		Usage:     "deduplicating block store for disk and VM images",
		Version:   backyVersion(),
		Writer:    e.stdout,
		ErrWriter: e.stderr,
		// Errors are reported, and mapped to exit codes, in main only.
		ExitErrHandler:         func(*cli.Context, error) {},
		HideVersion:            true,
		UseShortOptionHandling: true,
		CustomAppHelpTemplate:  cli.AppHelpTemplate + "\n" + exitCodesHelp + "\n",
		Flags: []cli.Flag{
			configFlag,
			jsonFlag,
			metricsFlag,
			logLevelFlag,
		},
		OnUsageError: func(c *cli.Context, err error, isSub bool) error {
			return usageErr("%v", err)
		},
		// One command per line, so that adding one touches one line.
		Commands: []*cli.Command{
			cmdInit(e),
			cmdBackup(e),
			cmdRestore(e),
			cmdCopy(e),
			cmdLs(e),
			cmdRm(e),
			cmdProtect(e, true),
			cmdProtect(e, false),
			cmdStats(e),
			cmdEnforce(e),
			cmdExpire(e),
			cmdCleanup(e),
			cmdScrub(e, false),
			cmdScrub(e, true),
			cmdMigrateEncryption(e),
			cmdExport(e),
			cmdImport(e),
			cmdRebuildMetastore(e),
			cmdNBD(e),
			cmdVersion(e),
		},
		CommandNotFound: func(c *cli.Context, name string) {
			e.unknownCommand = name
		},
	}
	for _, c := range app.Commands {
		c.Flags = append(c.Flags, configFlag, jsonFlag, metricsFlag, logLevelFlag)
		c.OnUsageError = app.OnUsageError
		c.Before = chainBefore(e, c.Before)
	}
	return app
}

// chainBefore runs the shared setup (config, logging) before a command.
func chainBefore(e *env, next cli.BeforeFunc) cli.BeforeFunc {
	return func(c *cli.Context) error {
		e.metrics = metrics{file: flagString(c, "metrics-file"), command: c.Command.Name, start: time.Now()}
		if c.Command.Name == "backup" { // per volume: labelled with it
			e.metrics.volume = c.Args().Get(1)
		}
		if c.Command.Name == "version" { // needs no configuration
			e.json = jsonWanted(c)
			return nil
		}
		if err := e.setup(c); err != nil {
			return err
		}
		if next != nil {
			return next(c)
		}
		return nil
	}
}

// args checks the number of positional arguments.
func args(c *cli.Context, min, max int, usage string) error {
	n := c.NArg()
	if n < min || (max >= 0 && n > max) {
		return usageErr("'backy %s' takes %s", c.Command.Name, usage)
	}
	return nil
}
