package restore

import "testing"

// SetDamageBatch makes the restores of test t record damaged blocks n per
// MarkInvalid.
func SetDamageBatch(t testing.TB, n int) {
	old := damageBatch
	damageBatch = n
	t.Cleanup(func() { damageBatch = old })
}
