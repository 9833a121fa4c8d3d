#!/usr/bin/env bash
# Runs a three-replica tokenbus cluster on loopback: the provider simulator
# and three refreshers whose embedded NATS servers form one cluster. Ctrl-C
# stops everything. Try: kill -9 the leader's pid (tokenctl status shows
# which replica leads) and watch a standby take over within lease.ttl.
#
# Every run starts from clean state: data/cluster (this demo's own store and
# logs, nothing else) is emptied first, so no earlier run's tokens or lease
# carry over.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf data/cluster
mkdir -p bin data/cluster
echo "building…"
go build -o bin/refresher ./services/refresher/cmd/refresher
go build -o bin/simulator ./tools/cmd/simulator
go build -o bin/tokenctl ./tools/cmd/tokenctl

pids=()
stop() {
  trap - EXIT INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'stop; echo; echo "stopped"; exit 0' INT TERM
trap stop EXIT

# http_get PORT PATH prints the response of 127.0.0.1:PORT for PATH, without curl.
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  timeout 2 cat <&3 || true
  exec 3<&-
}

# fail NAME LOG says NAME did not come up, shows the end of its log, and exits.
fail() {
  echo "$1 did not start; the end of $2:" >&2
  tail -5 "$2" >&2
  exit 1
}

./bin/simulator --listen 127.0.0.1:8090 --daraja-ttl 120s > data/cluster/simulator.log 2>&1 &
pids+=($!)
export TOKENBUS_SIMULATOR_URL=http://127.0.0.1:8090
replicas=()
for i in 1 2 3; do
  ./bin/refresher --config deploy/cluster/replica-$i.yaml > data/cluster/replica-$i.log 2>&1 &
  pids+=($!)
  replicas+=($!)
done

# Each replica is up when its own process (its instance name ends in its
# pid) answers on its status port: a port held by another program fails.
for i in 1 2 3; do
  pid=${replicas[$((i-1))]}
  for try in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || fail "replica $i" "data/cluster/replica-$i.log"
    if http_get 808$i /status.json 2>/dev/null | grep -q "\"instance\":\"[^\"]*-$pid\""; then break; fi
    [ "$try" = 100 ] && fail "replica $i (no answer on 127.0.0.1:808$i)" "data/cluster/replica-$i.log"
    sleep 0.1
  done
  echo "replica $i: pid $pid — http://127.0.0.1:808$i/ (status page), log data/cluster/replica-$i.log"
done
kill -0 "${pids[0]}" 2>/dev/null || fail "the simulator" data/cluster/simulator.log

servers=nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233
echo "waiting for the cluster to elect a leader…"
for try in $(seq 120); do
  if ./bin/tokenctl --server "$servers" --timeout 1s get daraja-sandbox >/dev/null 2>&1; then break; fi
  for i in 1 2 3; do kill -0 "${replicas[$((i-1))]}" 2>/dev/null || fail "replica $i" "data/cluster/replica-$i.log"; done
  [ "$try" = 120 ] && { echo "no token after 60 s: see data/cluster/replica-*.log" >&2; exit 1; }
  sleep 0.5
done
./bin/tokenctl --server "$servers" status || true
echo
echo "tokens: ./bin/tokenctl --server $servers get daraja-sandbox"
echo "status: ./bin/tokenctl --server $servers status"
echo "Ctrl-C stops the cluster."
wait
