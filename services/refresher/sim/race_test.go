//go:build race

package sim

// The race detector slows the simulation about tenfold: with it, the
// default is fewer seeds (go tool task test runs 1,000 without it). It also
// shuffles the runtime's run queue on purpose, so a seed replays bit for bit
// only without it (TestReplayIsBitForBit skips).
func init() {
	defaultSeeds = 100
	raceEnabled = true
}
