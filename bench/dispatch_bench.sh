#!/usr/bin/env bash
# Dispatch overhead of the sweep scheduler on real processes: N trivial trials (a k-nearest-neighbours head on
# cached features of 400 Fashion-MNIST images at 32x32, one trial per seed) through RabbitMQ, `coordinator serve` and
# N `gpu-worker` processes (default 2), on throwaway servers (scripts/test-servers.sh).
#
#   bench/dispatch_bench.sh [--trials 1000] [--parallelism 2] [--workers 2]
#   bench/dispatch_bench.sh --trials 10000 --parallelism 4 --workers 4    # the load figures of issue 13
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
# Then the cost of the hot paths in the database: transactions committed and rows written per trial over the whole
# sweep (pg_stat_database: scheduler, workers, heartbeats and all), and `coordinator sweep status` on the finished
# sweep (all its trials): five timed runs of the whole command, against the same on the one-trial warm-up sweep and
# `coordinator --help` (the process start alone).
# Run it on a quiet machine (nothing else building or testing). Needs a Release build: dotnet build -c Release.
set -euo pipefail
trials=1000
parallelism=2
workers=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --trials) trials="$2"; shift 2 ;;
        --parallelism) parallelism="$2"; shift 2 ;;
        --workers) workers="$2"; shift 2 ;;
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
for n in $(seq 1 "$workers"); do
    dotnet "$worker" --device cpu --id "bench-$n" > "$work/worker-$n.log" 2>&1 & pids+=($!)
done

# A one-trial sweep of the same spec first: it extracts the shared feature set, so that the measured sweep's trials are
# dispatched as they are decided. (Trials whose features are still extracting wait, out of the search's slots, and
# the search creates the next ones meanwhile: with the set unready, every trial would be created at once and wait,
# and its start-to-segment time would measure the extraction, not the dispatch.)
sed -e 's/^name: dispatch$/name: dispatch-warmup/' -e 's/^seed: .*/seed: [0]/' "$work/dispatch.yaml" > "$work/warmup.yaml"
warm="$(dotnet "$coordinator" sweep submit "$work/warmup.yaml" --cluster --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sweep"])')"
dotnet "$coordinator" sweep watch "$warm" --cluster --format json > /dev/null

stats() { psql_ bench -At -c "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = 'bench'"; }
before="$(stats)"
id="$(dotnet "$coordinator" sweep submit "$work/dispatch.yaml" --cluster --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sweep"])')"
echo "sweep $id: $trials trials, parallelism $parallelism, $workers workers" >&2
dotnet "$coordinator" sweep watch "$id" --cluster --format json > /dev/null
after="$(stats)"

lscpu | grep -E "^(Model name|CPU family|Model|Thread|Core|Socket)" >&2
psql_ bench -At <<SQL
WITH per_trial AS (
    SELECT EXTRACT(EPOCH FROM (s.started_at - t.started_at)) * 1000 AS overhead_ms,
           EXTRACT(EPOCH FROM (s.completed_at - make_interval(secs => s.seconds) - s.started_at)) * 1000 AS record_ms,
           t.started_at, s.completed_at
    FROM trials t JOIN segments s ON s.trial_id = t.id AND s.index = 0
    WHERE t.sweep_id = '$id' AND t.status = 'Completed')
SELECT format('trials %s | dispatch overhead ms: median %s, p10 %s, p90 %s, p99 %s | recording ms: median %s | events/s %s | wall %s s',
    count(*),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY overhead_ms)::numeric, 2),
    round(percentile_cont(0.1) WITHIN GROUP (ORDER BY overhead_ms)::numeric, 2),
    round(percentile_cont(0.9) WITHIN GROUP (ORDER BY overhead_ms)::numeric, 2),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY overhead_ms)::numeric, 2),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY record_ms)::numeric, 2),
    round((count(*) / EXTRACT(EPOCH FROM (max(completed_at) - min(started_at))))::numeric, 1),
    round(EXTRACT(EPOCH FROM (max(completed_at) - min(started_at)))::numeric, 1))
FROM per_trial;
SQL
python3 - "$before" "$after" "$trials" <<'PY'
import sys
(c0, r0), (c1, r1) = (map(int, x.split("|")) for x in sys.argv[1:3])
n = int(sys.argv[3])
print(f"database over the sweep: {(c1 - c0) / n:.2f} transactions and {(r1 - r0) / n:.2f} rows written per trial ({c1 - c0} and {r1 - r0} in all)")
PY
timed() {
    local runs=() t0
    for _ in 1 2 3 4 5; do
        t0=$(date +%s%N); "$@" > /dev/null; runs+=($((($(date +%s%N) - t0) / 1000000)))
    done
    printf '%s\n' "${runs[@]}" | sort -n | sed -n 3p
}
# The database's share: status's one query over the sweep's trials (the columns the board shows), as PostgreSQL runs it.
plan="$(psql_ bench -At -c "EXPLAIN (ANALYZE, FORMAT JSON) SELECT id, number, hyperparameters, strategy, status, epochs, epoch, target_epochs, validation_accuracy, validation_loss, best_metric, test_accuracy, worker_id, progress, dispatched_segment, seconds, failure_reason, attempts FROM trials WHERE sweep_id = '$id' ORDER BY number")"
python3 - "$plan" <<'PY'
import json, sys
p = json.loads(sys.argv[1])[0]
print(f"status query in PostgreSQL: {p['Execution Time']:.1f} ms execution, {p['Planning Time']:.1f} ms planning, {p['Plan']['Actual Rows']} rows")
PY
# The same command on the one-trial warm-up sweep is the fixed cost (process start, configuration, EF Core's model and
# first queries); the difference is what the sweep's size costs.
echo "sweep status, median of 5 whole commands: $trials trials $(timed dotnet "$coordinator" sweep status "$id" --cluster --format json) ms," \
    "as a table $(timed dotnet "$coordinator" sweep status "$id" --cluster) ms;" \
    "1 trial $(timed dotnet "$coordinator" sweep status "$warm" --cluster --format json) ms; coordinator --help $(timed dotnet "$coordinator" --help) ms"
