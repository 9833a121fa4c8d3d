// Package clustertest holds the refresher's cluster tests with real
// processes: a three-node nats-server cluster on loopback and three refresher
// replicas with eight Daraja providers each, built from source by the test
// setup. TestFailover runs them under kill -9, SIGSTOP and SIGCONT, a NATS
// node restart and a KV stream leader step-down; TestSteadyManyProviders runs
// them with no failure (30 s, or 60 s with TOKENBUS_CLUSTER_LONG=1);
// TestFencedWritesOnR3 shows why token writes are serialised; TestPartition
// cuts the leader's node off from the other two (its route connections pass
// through TCP proxies the test cuts and restores) for 15 s under load;
// TestRollingRestartThrowsNoTokenAway SIGTERMs and restarts each of three
// replicas twice round with sixteen slow Daraja credentials (no token lost,
// no call abandoned or overlapping, every stop exits 0);
// TestLeastPrivilege, TestAttackEveryRole and TestShippedClusterConfigs run
// the shipped deploy/nats configuration and attack it with every role (the
// stock nats CLI is built on first use).
// TestBackupRestore runs the backup-and-restore runbook of
// docs/deploying.md with the stock NATS CLI; TestRollingUpgrade upgrades
// the replicas one by one from the previous release's binary
// (PreviousRelease, built from this repository's history) and rolls one
// back. It has no non-test code.
package clustertest
