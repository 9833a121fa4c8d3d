// Package clustertest holds the refresher's failover tests with real
// processes: a three-node nats-server cluster on loopback and three refresher
// replicas, built from source by the test setup, under kill -9, SIGSTOP and
// SIGCONT, a NATS node restart and a KV stream leader step-down. It has no
// non-test code.
package clustertest
