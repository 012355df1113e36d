#!/usr/bin/env bash
# Forward-only rates of several architectures (`coordinator models bench`, random input at the native size, batch 32,
# the worker's default lanes), each precision, repetitions interleaved; optionally against a second build side by side
# (`--baseline PATH`, a `coordinator` executable of another commit), which is how a change's before and after are
# compared on one machine in one run. Kernel checks are warmed up first (the verdict cache), so no probe is timed.
#
#   bench/models_bench.sh [--reps N] [--models a,b,...] [--precisions fp32,bf16] [--seconds S] [--baseline PATH] [--no-build]
#
# Prints a table of medians (min-max) and the CPU it ran on; raw JSON lines in /tmp/cluster-models-bench/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
reps=3
models="resnet18,resnet50,mobilenet_v2,mobilenet_v3_large,inception_v3"
precisions="fp32,bf16"
seconds=10
baseline=""
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --precisions) precisions="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --baseline) baseline="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "models_bench: unknown option $1" >&2; exit 2 ;;
    esac
done
ours="$repo/src/Coordinator/bin/Release/net10.0/coordinator"
if [[ $build == 1 ]]; then
    (cd "$repo" && dotnet build src/Coordinator -c Release -v quiet -nologo >/dev/null)
fi
[[ -x "$ours" ]] || { echo "models_bench: no build at $ours" >&2; exit 2; }
[[ -z "$baseline" || -x "$baseline" ]] || { echo "models_bench: --baseline $baseline is not an executable" >&2; exit 2; }
out=/tmp/cluster-models-bench
mkdir -p "$out"
results="$out/results-$(date +%Y%m%d-%H%M%S).jsonl"
IFS=, read -r -a model_list <<<"$models"
IFS=, read -r -a precision_list <<<"$precisions"
builds=("ours=$ours")
[[ -n "$baseline" ]] && builds+=("baseline=$baseline")

run() { # build-name executable model precision rep
    local json rc=0
    json="$("$2" models bench "$3" --precision "$4" --seconds "$seconds" --format json 2>/dev/null)" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "{\"build\":\"$1\",\"model\":\"$3\",\"precision\":\"$4\",\"rep\":$5,\"exit\":$rc}" >>"$results"
        echo "  $1 $3 $4 rep $5: exit code $rc" >&2
    else
        echo "$json" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(build=sys.argv[1], model=sys.argv[2], rep=int(sys.argv[3]), exit=0); print(json.dumps(r))' "$1" "$3" "$5" >>"$results"
        echo "  $1 $3 $4 rep $5: $(tail -1 "$results" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["imagesPerSecond"])') images/s" >&2
    fi
}

echo "warming the kernel checks up (verdicts cached, not timed)" >&2
for m in "${model_list[@]}"; do for p in "${precision_list[@]}"; do
    "$ours" models bench "$m" --precision "$p" --seconds 1 >/dev/null 2>&1 || true
done; done
for rep in $(seq 1 "$reps"); do
    for m in "${model_list[@]}"; do for p in "${precision_list[@]}"; do for b in "${builds[@]}"; do
        run "${b%%=*}" "${b#*=}" "$m" "$p" "$rep"
    done; done; done
done
/usr/bin/python3 - "$results" <<'PY'
import json, statistics, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
info = {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in cpu.splitlines() if ":" in l)}
print(f"CPU: {info.get('Model name')} (family {info.get('CPU family')}, model {info.get('Model')}), {info.get('CPU(s)')} CPUs; results {sys.argv[1]}")
print("| model | precision | build | runs | images/s median | min | max | rerouted configurations |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
keys = sorted({(r["model"], r["precision"], r["build"]) for r in rows}, key=lambda k: (k[0], k[1], k[2] != "ours"))
for m, p, b in keys:
    rs = [r for r in rows if (r["model"], r["precision"], r["build"]) == (m, p, b)]
    ok = [r["imagesPerSecond"] for r in rs if r["exit"] == 0]
    failed = [r["exit"] for r in rs if r["exit"] != 0]
    rerouted = {len(r["kernels"]["rerouted"]) for r in rs if r["exit"] == 0 and "kernels" in r}
    if ok:
        print(f"| {m} | {p} | {b} | {len(ok)} | {statistics.median(ok):.1f} | {min(ok):.1f} | {max(ok):.1f} | {','.join(map(str, sorted(rerouted))) or '-'} |"
              + (f" (and {len(failed)} exits {failed})" if failed else ""))
    else:
        print(f"| {m} | {p} | {b} | 0 | exit code {failed[0]} | | | |")
PY
