// Package tests holds tokenbus's end-to-end tests of its clients: the Go
// client library against a real refresher (rotation, Transport, restarts,
// expiry, concurrency), the Node.js example, the request-reply benchmark, and
// the check that the client library never depends on nats-server. It is a
// module of its own because it needs nats-server and the refresher, which the
// client library must not pull in. Package harness runs a refresher
// in-process for these tests and for the tools' tests.
package tests
