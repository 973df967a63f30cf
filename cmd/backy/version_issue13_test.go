package main

import (
	"runtime/debug"
	"testing"
)

func TestBuildVersion(t *testing.T) {
	vcs := func(rev, at, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: at}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "0476f7d74f80edb9186eea7a628334a82b7581d2"
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		want builtFrom
	}{
		{"no build info", nil, builtFrom{version: "0.1.0-dev"}},
		{"go run or -buildvcs=false", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, builtFrom{version: "0.1.0-dev"}},
		{"go install in a clone: pseudo-version and VCS settings",
			&debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261208003402-0476f7d74f80"}, Settings: vcs(rev, "2026-12-08T00:34:02Z", "false")},
			builtFrom{version: "0.1.0-dev+0476f7d74f80", commit: rev, time: "2026-12-08T00:34:02Z"}},
		{"local changes",
			&debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261208003402-0476f7d74f80+dirty"}, Settings: vcs(rev, "2026-12-08T00:34:02Z", "true")},
			builtFrom{version: "0.1.0-dev+0476f7d74f80.dirty", commit: rev, time: "2026-12-08T00:34:02Z", modified: true}},
		{"after a tag", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.1-0.20261208003402-0476f7d74f80"}, Settings: vcs(rev, "2026-12-08T00:34:02Z", "false")},
			builtFrom{version: "0.1.0-dev+0476f7d74f80", commit: rev, time: "2026-12-08T00:34:02Z"}},
		{"a release", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.0"}}, builtFrom{version: "v1.2.0"}},
		{"a release built in its clone", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.0"}, Settings: vcs(rev, "2026-12-08T00:34:02Z", "false")},
			builtFrom{version: "v1.2.0", commit: rev, time: "2026-12-08T00:34:02Z"}},
		{"go install pkg@commit (module proxy: no VCS settings)", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261208003402-0476f7d74f80"}},
			builtFrom{version: "v0.0.0-20261208003402-0476f7d74f80"}},
	}
	for _, c := range cases {
		if got := buildVersion(c.bi); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}
