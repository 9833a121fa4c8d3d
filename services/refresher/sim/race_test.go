//go:build race

package sim

// The race detector slows the simulation about tenfold: with it, the
// default is fewer seeds (go tool task test runs 1,000 without it).
func init() { defaultSeeds = 100 }
