#!/usr/bin/env bash
# Dispatch overhead of the sweep scheduler on real processes: N trivial trials (a k-nearest-neighbours head on
# cached features of 400 Fashion-MNIST images at 32x32, one trial per seed) through RabbitMQ, `coordinator serve` and
# two `gpu-worker` processes, on throwaway servers (scripts/test-servers.sh).
#
#   bench/dispatch_bench.sh [--trials 1000] [--parallelism 2]
#
# Per trial, from the database the service and the workers wrote:
#   overhead = segments.started_at (the worker begins the segment's work) - trials.started_at (the scheduler's
#              decision, saved in the transaction that sends the segment)
# i.e. save + send + RabbitMQ + the worker's consume (and its "already recorded?" lookup when the delivery could be a
# repeat; a first send skips it). Also printed: what recording took (completed_at - started_at - the segment's own
# seconds: the worker's two queries and its insert). With parallelism equal to the
# worker count no segment waits for a busy worker. Also printed: scheduler events per second over the sweep (trials
# completed / wall time from the first decision to the last completion), which bounds from below what one
# coordinator handles, since the workers' own work is in that time too.
# Run it on a quiet machine (nothing else building or testing). Needs a Release build: dotnet build -c Release.
set -euo pipefail
trials=1000
parallelism=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --trials) trials="$2"; shift 2 ;;
        --parallelism) parallelism="$2"; shift 2 ;;
        *) echo "dispatch_bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
coordinator="$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll"
worker="$repo/src/GpuWorker/bin/Release/net10.0/gpu-worker.dll"
[[ -f "$coordinator" && -f "$worker" ]] || { echo "dispatch_bench.sh: build first: dotnet build -c Release" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/dispatch-bench.XXXXXX")"
# Its own top-level folder, as scripts/test.sh makes it (the servers' users must reach it).
servers="$(mktemp -d "${TMPDIR:-/tmp}/dispatch-bench-servers.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bash "$repo/scripts/test-servers.sh" stop "$servers" >/dev/null 2>&1 || true
    [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT
eval "$(bash "$repo/scripts/test-servers.sh" start "$servers")"

pg_port="${CLUSTER_TEST_POSTGRES#*Port=}"; pg_port="${pg_port%%;*}"
psql_() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -d "$@"; }
psql_ postgres -qc "CREATE DATABASE bench" >/dev/null
export RabbitMq__Host=127.0.0.1 RabbitMq__Port="$CLUSTER_TEST_RABBITMQ_PORT" RabbitMq__Username="$CLUSTER_TEST_RABBITMQ_USER" RabbitMq__Password="$CLUSTER_TEST_RABBITMQ_PASSWORD"
export Database__ConnectionString="Host=127.0.0.1;Port=$pg_port;Database=bench;Username=postgres"
export Cluster__StorageRoot="$work/storage" Cluster__Mode=Cluster DOTNET_CLI_TELEMETRY_OPTOUT=1

seeds="$(seq -s ', ' 1 "$trials")"
cp -r "$repo/examples/fashion-sample" "$work/"
cat > "$work/dispatch.yaml" <<EOF
name: dispatch
dataset:
  train: fashion-sample/train
  validation: 0.25
model: resnet18-imagenet
weights: builtin
input_size: 32
strategy: feature-extractor
cutoff: avgpool
head: knn
seed: [$seeds]
parallelism: $parallelism
EOF

dotnet "$coordinator" db migrate --cluster >/dev/null
dotnet "$coordinator" serve --cluster > "$work/serve.log" 2>&1 & pids+=($!)
dotnet "$worker" --device cpu --id bench-a > "$work/worker-a.log" 2>&1 & pids+=($!)
dotnet "$worker" --device cpu --id bench-b > "$work/worker-b.log" 2>&1 & pids+=($!)

id="$(dotnet "$coordinator" sweep submit "$work/dispatch.yaml" --cluster --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sweep"])')"
echo "sweep $id: $trials trials, parallelism $parallelism" >&2
dotnet "$coordinator" sweep watch "$id" --cluster --format json > /dev/null

lscpu | grep -E "^(Model name|CPU family|Model|Thread|Core|Socket)" >&2
psql_ bench -At <<SQL
WITH per_trial AS (
    SELECT EXTRACT(EPOCH FROM (s.started_at - t.started_at)) * 1000 AS overhead_ms,
           EXTRACT(EPOCH FROM (s.completed_at - make_interval(secs => s.seconds) - s.started_at)) * 1000 AS record_ms,
           t.started_at, s.completed_at
    FROM trials t JOIN segments s ON s.trial_id = t.id AND s.index = 0
    WHERE t.sweep_id = '$id' AND t.status = 'Completed')
SELECT format('trials %s | dispatch overhead ms: median %s, p10 %s, p90 %s | recording ms: median %s | events/s %s | wall %s s',
    count(*),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY overhead_ms)::numeric, 2),
    round(percentile_cont(0.1) WITHIN GROUP (ORDER BY overhead_ms)::numeric, 2),
    round(percentile_cont(0.9) WITHIN GROUP (ORDER BY overhead_ms)::numeric, 2),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY record_ms)::numeric, 2),
    round((count(*) / EXTRACT(EPOCH FROM (max(completed_at) - min(started_at))))::numeric, 1),
    round(EXTRACT(EPOCH FROM (max(completed_at) - min(started_at)))::numeric, 1))
FROM per_trial;
SQL
