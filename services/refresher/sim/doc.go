// Package sim is the deterministic simulation of leadership (issue 17). Its
// test runs three replicas' real leader, fence, gate and refresh code in one
// process, inside a testing/synctest bubble (simulated time), against a
// simulated KV with JetStream's semantics — per-subject sequences,
// expected-last-subject-sequence checks, R3's "wrong last sequence" (10164)
// refusal while another write to the subject commits, replies lost after a
// commit, slow commits, keys deleted or overwritten from outside, a replica
// cut off from the majority that can read but not commit — and a simulated
// Daraja that records every call with its caller and term, and whose new
// token invalidates the previous one.
//
// A seed fixes the schedule: faults, their timing, clock-rate drift within
// the documented bound, SIGTERMs and restarts, rotations of a provider.
// Named invariants are checked all along (see invariant names in
// sim_test.go); a failing seed prints itself and the command that replays
// it:
//
//	go test ./services/refresher/sim -run TestSimulation -seeds 1000
//	go test ./services/refresher/sim -run TestSimulation -seed 42 -v
//	go tool task sim -- -seeds 20000
//
// The package has no non-test code.
package sim
