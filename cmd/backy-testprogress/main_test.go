package main

import (
	"strings"
	"testing"
	"time"
)

func TestReporter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	var out strings.Builder
	r := newReporter(&out, func() time.Time { return now })
	stream := []string{
		`{"Action":"start","Package":"p/slow"}`,
		`{"Action":"start","Package":"p/fast"}`,
		`{"Action":"run","Package":"p/slow","Test":"TestA"}`,
		`{"Action":"output","Package":"p/slow","Test":"TestA","Output":"=== RUN   TestA\n"}`,
		`{"Action":"pause","Package":"p/slow","Test":"TestA"}`,
		`{"Action":"run","Package":"p/slow","Test":"TestB"}`,
		`{"Action":"run","Package":"p/slow","Test":"TestB/sub"}`,
		`{"Action":"output","Package":"p/slow","Test":"TestB/sub","Output":"    b_test.go:9: boom\n"}`,
		`{"Action":"run","Package":"p/fast","Test":"TestQuiet"}`,
		`{"Action":"output","Package":"p/fast","Test":"TestQuiet","Output":"never shown\n"}`,
		`{"Action":"pass","Package":"p/fast","Test":"TestQuiet","Elapsed":0.01}`,
		`{"Action":"output","Package":"p/fast","Output":"ok  \tp/fast\t0.02s\n"}`,
		`{"Action":"pass","Package":"p/fast","Elapsed":0.02}`,
		`{"Action":"skip","Package":"p/none"}`,
		`not json: passed on`,
	}
	for _, l := range stream {
		r.line([]byte(l))
	}
	now = t0.Add(2 * time.Minute)
	r.heartbeat()
	for _, l := range []string{
		`{"Action":"fail","Package":"p/slow","Test":"TestB/sub","Elapsed":0}`,
		`{"Action":"fail","Package":"p/slow","Test":"TestB","Elapsed":0}`,
		`{"Action":"cont","Package":"p/slow","Test":"TestA"}`,
		`{"Action":"pass","Package":"p/slow","Test":"TestA","Elapsed":1}`,
		`{"Action":"output","Package":"p/slow","Output":"FAIL\n"}`,
		`{"Action":"output","Package":"p/slow","Output":"FAIL\tp/slow\t130.1s\n"}`,
		`{"Action":"fail","Package":"p/slow","Elapsed":130.1}`,
		`{"ImportPath":"p/broken [p/broken.test]","Action":"build-output","Output":"# p/broken\nx.go:1: undefined: y\n"}`,
		`{"ImportPath":"p/broken [p/broken.test]","Action":"build-fail"}`,
		`{"Action":"fail","Package":"p/broken","Elapsed":0,"FailedBuild":"p/broken [p/broken.test]"}`,
	} {
		r.line([]byte(l))
	}
	r.summary()
	want := "ok    p/fast  0.0s\n" +
		"-     p/none  [no test files]\n" +
		"not json: passed on\n" +
		"...   2m0s: still running p/slow (TestB)\n" +
		"    b_test.go:9: boom\n" +
		"FAIL  p/slow  130.1s\n" +
		"# p/broken\nx.go:1: undefined: y\n" +
		"FAIL  p/broken  [build failed]\n" +
		"1 package(s) ok, 2 failed, 1 without tests, in 2m0s\n"
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
	if r.failed != 2 {
		t.Errorf("failed = %d", r.failed)
	}
}
