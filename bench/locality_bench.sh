#!/usr/bin/env bash
# Locality (issue 12, item 3): the same sweep on real processes (throwaway RabbitMQ and PostgreSQL from
# scripts/test-servers.sh, `coordinator serve`, two `gpu-worker`s), once with segments sent to the worker that holds
# their features in memory and once with every segment on the shared queue (Coordinator__Locality=false).
#
#   bench/locality_bench.sh [--reps 1] [--input-size 224] [--memory-mib 100] [--parallelism 1]
#
# The sweep: fine-tune-top on the bundled Fashion-MNIST sample (400 training images, a fifth held out), ResNet-18 with
# its ImageNet weights, cutoff {layer3, layer4} x lr {0.001, 0.01}, 3 epochs one segment each (the first trains the
# head alone). Each worker may keep --memory-mib of feature sets in memory: at 224 px, layer3's set is about 80 MB and
# layer4's 40 MB, so a worker holds one prefix, not both. With fewer trials running than workers (--parallelism 1, as at
# a sweep's tail or in ASHA's upper rungs), the shared queue hands segments to the idle workers in turn.
# Printed per run: feature sets read from storage and reused (the workers' own counters, from their last log line),
# segments sent to a holder's own queue, segments per worker, the training span (first segment's start to the last
# one's end), and whether both runs got the same validation accuracy per trial; with --reps N the two alternate which
# goes first, and the medians are printed last. Needs a Release build; run it on a quiet machine.
set -euo pipefail
reps=1
input_size=224
memory_mib=100
parallelism=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps="$2"; shift 2 ;;
        --input-size) input_size="$2"; shift 2 ;;
        --memory-mib) memory_mib="$2"; shift 2 ;;
        --parallelism) parallelism="$2"; shift 2 ;;
        *) echo "locality_bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
repo="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
coordinator="$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll"
worker="$repo/src/GpuWorker/bin/Release/net10.0/gpu-worker.dll"
[[ -f "$coordinator" && -f "$worker" ]] || { echo "locality_bench.sh: build first: dotnet build -c Release" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/locality-bench.XXXXXX")"
servers="$(mktemp -d "${TMPDIR:-/tmp}/locality-bench-servers.XXXXXX")"
pids=()
stop_processes() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
cleanup() {
    stop_processes
    bash "$repo/scripts/test-servers.sh" stop "$servers" >/dev/null 2>&1 || true
    [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT
eval "$(bash "$repo/scripts/test-servers.sh" start "$servers")"
pg_port="${CLUSTER_TEST_POSTGRES#*Port=}"; pg_port="${pg_port%%;*}"
psql_() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$@"; }
export RabbitMq__Host=127.0.0.1 RabbitMq__Port="$CLUSTER_TEST_RABBITMQ_PORT" RabbitMq__Username="$CLUSTER_TEST_RABBITMQ_USER" RabbitMq__Password="$CLUSTER_TEST_RABBITMQ_PASSWORD"
export Cluster__Mode=Cluster Worker__FeatureMemoryMiB="$memory_mib" DOTNET_CLI_TELEMETRY_OPTOUT=1
mgmt="http://127.0.0.1:$CLUSTER_TEST_RABBITMQ_MANAGEMENT_PORT/api"

cp -r "$repo/examples/fashion-sample" "$work/"
cat > "$work/sweep.yaml" <<SPEC
name: locality-bench
dataset:
  train: fashion-sample/train
  validation: 0.2
model: resnet18-imagenet
weights: builtin
input_size: $input_size
strategy: fine-tune-top
cutoff: [layer3, layer4]
head: mlp
lr: [0.001, 0.01]
optimizer: {name: sgd, momentum: 0.9}
epochs: 3
head_epochs: 1
segment_epochs: 1
batch_size: 32
seed: 7
search: {method: grid}
parallelism: $parallelism
SPEC

run() {
    local name="$1" locality="$2"
    # Its own database, vhost and storage: nothing of the other run is cached or queued.
    psql_ postgres -qc "CREATE DATABASE $name" >/dev/null
    curl -sf -u guest:guest -X PUT "$mgmt/vhosts/$name" -H 'content-type: application/json' -d '{}' >/dev/null
    curl -sf -u guest:guest -X PUT "$mgmt/permissions/$name/guest" -H 'content-type: application/json' -d '{"configure":".*","write":".*","read":".*"}' >/dev/null
    export RabbitMq__VirtualHost="$name" Database__ConnectionString="Host=127.0.0.1;Port=$pg_port;Database=$name;Username=postgres"
    export Cluster__StorageRoot="$work/storage-$name" Coordinator__Locality="$locality"
    dotnet "$coordinator" db migrate --cluster >/dev/null
    dotnet "$coordinator" serve --cluster > "$work/$name-serve.log" 2>&1 & pids+=($!)
    dotnet "$worker" --device cpu --id "$name-a" > "$work/$name-worker-a.log" 2>&1 & pids+=($!)
    dotnet "$worker" --device cpu --id "$name-b" > "$work/$name-worker-b.log" 2>&1 & pids+=($!)
    local id
    id="$(cd "$work" && dotnet "$coordinator" sweep submit sweep.yaml --cluster --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sweep"])')"
    dotnet "$coordinator" sweep watch "$id" --cluster --format json > /dev/null
    stop_processes
    local directed
    directed="$(grep -c 'which holds its features in memory' "$work/$name-serve.log" || true)"
    python3 - "$work" "$name" "$directed" <<'PY'
import json, sys, re
work, name, directed = sys.argv[1:]
loads = hits = 0
for w in "ab":
    last = None
    for line in open(f"{work}/{name}-worker-{w}.log", errors="replace"):
        if "read from storage" in line:
            last = line
    if last:
        try:
            p = json.loads(last)
            loads += int(p.get("Loads", 0)); hits += int(p.get("Hits", 0))
        except ValueError:
            m = re.search(r"(\d+) read from storage and (\d+) reused", last)
            loads += int(m.group(1)); hits += int(m.group(2))
print(f"{name}: feature sets read from storage {loads}, reused from memory {hits}, segments sent to the holder {directed}")
open(f"{work}/summary.tsv", "a").write(f"{name.rstrip('0123456789')}\t{loads}\t{hits}\t{directed}\t")
PY
    psql_ "$name" -At -c "SELECT '$name: segments per worker ' || string_agg(worker_id || ' ' || n, ', ') FROM (SELECT worker_id, count(*) n FROM segments GROUP BY worker_id ORDER BY worker_id) x"
    local span
    span="$(psql_ "$name" -At -c "SELECT round(EXTRACT(EPOCH FROM (max(completed_at) - min(started_at)))::numeric, 1) FROM segments")"
    echo "$name: training span $span s (first segment started to last completed)"
    echo "$span" >> "$work/summary.tsv"
    psql_ "$name" -At -c "SELECT number || ' ' || round(validation_accuracy::numeric, 6) FROM trials ORDER BY number" > "$work/$name-results.txt"
}

lscpu | grep -E "^(Model name|CPU family|Model|Thread|Core|Socket)" >&2
for rep in $(seq 1 "$reps"); do
    if (( rep % 2 == 1 )); then run "locality$rep" true; run "shared$rep" false; else run "shared$rep" false; run "locality$rep" true; fi
    if diff -q "$work/locality$rep-results.txt" "$work/shared$rep-results.txt" >/dev/null; then
        echo "rep $rep: validation accuracy equal in every trial ($(wc -l < "$work/locality$rep-results.txt") trials)"
    else
        echo "rep $rep: validation accuracy differs:"; paste "$work/locality$rep-results.txt" "$work/shared$rep-results.txt"
    fi
done
python3 - "$work/summary.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
for mode in ("locality", "shared"):
    runs = [r for r in rows if r[0] == mode]
    med = lambda i: statistics.median(float(r[i]) for r in runs)
    print(f"median of {len(runs)} {mode}: read {med(1):g}, reused {med(2):g}, directed {med(3):g}, span {med(4):.1f} s")
PY
