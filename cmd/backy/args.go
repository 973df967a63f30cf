package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// interspersed rewrites args so that a command's flags may follow its
// positional arguments ("backy ls vol --json"), which urfave/cli v2 does
// not parse by itself: flags found after the first positional argument are
// moved in front of it. "--" ends flag parsing as usual.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	i := 1
	// Global flags up to the command name.
	takesValue := flagArity(app.Flags)
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" && args[i] != "--" {
		out = append(out, args[i])
		if takesValue[flagName(args[i])] && !strings.Contains(args[i], "=") && i+1 < len(args) {
			i++
			out = append(out, args[i])
		}
		i++
	}
	if i >= len(args) {
		return out
	}
	cmd := app.Command(args[i])
	out = append(out, args[i])
	i++
	if cmd == nil {
		return append(out, args[i:]...)
	}
	takesValue = flagArity(append(append([]cli.Flag{}, cmd.Flags...), app.Flags...))
	var flags, pos []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i:]...)
			break
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			flags = append(flags, a)
			if takesValue[flagName(a)] && !strings.Contains(a, "=") && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(append(out, flags...), pos...)
}

func flagName(a string) string {
	a = strings.TrimLeft(a, "-")
	if k, _, ok := strings.Cut(a, "="); ok {
		return k
	}
	return a
}

// flagArity maps every flag name and alias to whether it takes a value.
func flagArity(flags []cli.Flag) map[string]bool {
	m := map[string]bool{}
	for _, f := range flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			m[n] = !isBool
		}
	}
	return m
}

// didYouMean suggests the commands closest to a mistyped name: those at
// the smallest edit distance, at most 2 (1 for names of up to 3 letters),
// or those the name is a prefix of. It returns " (did you mean ...?)" or "".
func didYouMean(app *cli.App, name string) string {
	limit := 2
	if len(name) <= 3 {
		limit = 1
	}
	best, picks := limit+1, []string(nil)
	for _, c := range app.Commands {
		if c.Hidden {
			continue
		}
		d := editDistance(strings.ToLower(name), c.Name)
		if d > limit && len(name) >= 2 && strings.HasPrefix(c.Name, strings.ToLower(name)) {
			d = limit // a prefix: as good as the worst close match
		}
		switch {
		case d > limit:
		case d < best:
			best, picks = d, []string{c.Name}
		case d == best:
			picks = append(picks, c.Name)
		}
	}
	if len(picks) == 0 {
		return ""
	}
	return " (did you mean '" + strings.Join(picks, "' or '") + "'?)"
}

// editDistance is the Levenshtein distance of a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
