#!/usr/bin/env bash
# Runs a three-replica tokenbus cluster on loopback: the provider simulator
# and three refreshers whose embedded NATS servers form one cluster. Ctrl-C
# stops everything. Try: kill -9 the leader's pid (tokenctl status shows
# which replica leads) and watch a standby take over within lease.ttl.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p bin data/cluster
echo "building…"
go build -o bin/refresher ./services/refresher/cmd/refresher
go build -o bin/simulator ./tools/cmd/simulator
go build -o bin/tokenctl ./tools/cmd/tokenctl

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

./bin/simulator --listen 127.0.0.1:8090 --daraja-ttl 120s > data/cluster/simulator.log 2>&1 &
pids+=($!)
export TOKENBUS_SIMULATOR_URL=http://127.0.0.1:8090
for i in 1 2 3; do
  ./bin/refresher --config deploy/cluster/replica-$i.yaml > data/cluster/replica-$i.log 2>&1 &
  pids+=($!)
  echo "replica $i: pid $! — http://127.0.0.1:808$i/ (status page), log data/cluster/replica-$i.log"
done
servers=nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233
echo "waiting for the cluster to elect a leader…"
for _ in $(seq 60); do
  if ./bin/tokenctl --server "$servers" get daraja-sandbox >/dev/null 2>&1; then break; fi
  sleep 1
done
./bin/tokenctl --server "$servers" status || true
echo
echo "tokens: ./bin/tokenctl --server $servers get daraja-sandbox"
echo "status: ./bin/tokenctl --server $servers status"
echo "Ctrl-C stops the cluster."
wait
