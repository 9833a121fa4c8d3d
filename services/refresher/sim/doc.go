// Package sim is the deterministic simulation of leadership (issue 17). Its
// test runs three replicas' real leader (lease, fence, gate, loops, forwarded
// refreshes) and refresh code in one process, inside a testing/synctest
// bubble (simulated time), against a simulated KV with JetStream's semantics
// — per-subject sequences, expected-last-subject-sequence checks, atomic
// batches of fenced writes (all or none, at consecutive sequences), R3's "wrong
// last sequence" (10164) refusal while another write to the subject commits,
// replies lost after a commit, slow commits, keys deleted or overwritten from
// outside, the tokens bucket deleted and created again, a replica cut off from
// the majority that can read but not commit — a simulated bus for forwarded
// refreshes (leader.Transport), and a simulated Daraja that records every call
// with its caller, term and app, and whose new token invalidates the previous
// one. Every call leaves through leader.Guard.
//
// A seed fixes the schedule: faults, their timing, clock-rate drift within
// the documented bound, SIGTERMs and restarts, rotations, runtime providers
// put, rotated and deleted, process pauses longer than the lease, token.refresh
// reports. Named invariants are checked all along (sim_test.go and
// runtime_test.go; docs/leadership.md says what each checks); a failing seed
// prints itself and the command that replays it, and replays bit for bit
// without -race (replay_test.go says what that took):
//
//	go test ./services/refresher/sim -run TestSimulation -seeds 1000
//	go test ./services/refresher/sim -run TestSimulation -seed 42 -v
//	go tool task sim -- -seeds 20000
//
// The package has no non-test code.
package sim
