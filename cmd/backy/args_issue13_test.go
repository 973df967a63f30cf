package main

import "testing"

func TestDidYouMean(t *testing.T) {
	app := newApp(&env{})
	for _, c := range []struct{ in, want string }{
		{"lss", " (did you mean 'ls'?)"},
		{"bakup", " (did you mean 'backup'?)"},
		{"restor", " (did you mean 'restore'?)"},
		{"deepscrub", " (did you mean 'deep-scrub'?)"},
		{"Backup", " (did you mean 'backup'?)"},
		{"protec", " (did you mean 'protect'?)"},
		{"rebuild", " (did you mean 'rebuild-metastore'?)"},
		{"migrate", " (did you mean 'migrate-encryption'?)"},
		{"xyzzy", ""},
		{"s", " (did you mean 'ls'?)"},
		{"q", ""},
	} {
		if got := didYouMean(app, c.in); got != c.want {
			t.Errorf("didYouMean(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
