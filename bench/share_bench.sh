#!/usr/bin/env bash
# Sharing frozen work against none (issue 12): one sweep of 24 trials, run once with sharing and once with
# `--no-share` (every trial computes its own frozen prefix, as sweep systems without sharing do), on the bundled
# Fashion-MNIST sample (400 training images, a fifth held out for validation, 200 test images), ResNet-18 with its
# ImageNet weights: strategy {feature-extractor (mlp head), fine-tune-top} x cutoff {layer3, layer4} x lr {0.001,
# 0.003, 0.01} x weight decay {0, 1e-4}, 3 epochs (fine-tune-top: 1 of them the head alone). Each run embedded (one
# in-process worker) in its own fresh storage; wall = the whole `sweep run` command. Prints both walls, their ratio,
# and how far the two runs' results differ (per trial, matched by its parameters). Needs: dotnet build -c Release.
# `--grid heads` runs a second sweep of 24 trials where the frozen work is nearly all the work: feature-extractor (mlp
# head) x cutoff {layer2, layer3, layer4, avgpool} x the same lr and weight decay.
#
#   bench/share_bench.sh [--reps 1] [--input-size 224] [--epochs 3] [--grid mixed|heads]
set -euo pipefail
reps=1
input_size=224
epochs=3
grid=mixed
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps="$2"; shift 2 ;;
        --input-size) input_size="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        --grid) grid="$2"; shift 2 ;;
        *) echo "share_bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
repo="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
coordinator="$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll"
[[ -f "$coordinator" ]] || { echo "share_bench.sh: build first: dotnet build -c Release" >&2; exit 2; }
work="$(mktemp -d "${TMPDIR:-/tmp}/share-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -r "$repo/examples/fashion-sample" "$work/"
export DOTNET_CLI_TELEMETRY_OPTOUT=1
case "$grid" in
    mixed) strategy_and_cutoff=$'strategy: [feature-extractor, fine-tune-top]\ncutoff: [layer3, layer4]' ;;
    heads) strategy_and_cutoff=$'strategy: feature-extractor\ncutoff: [layer2, layer3, layer4, avgpool]' ;;
    *) echo "share_bench.sh: --grid is mixed or heads, not $grid" >&2; exit 2 ;;
esac
cat > "$work/sweep.yaml" <<EOF
name: share-bench
dataset:
  train: fashion-sample/train
  validation: 0.2
  test: fashion-sample/test
model: resnet18-imagenet
weights: builtin
input_size: $input_size
$strategy_and_cutoff
head: mlp
lr: [0.001, 0.003, 0.01]
optimizer: {name: sgd, momentum: 0.9, weight_decay: [0.0, 0.0001]}
schedule: cosine
epochs: $epochs
head_epochs: 1
batch_size: 32
seed: 7
search: {method: grid}
metric: {name: val_accuracy, mode: max}
parallelism: 1
EOF

run() { # storage, results file, extra args...
    local storage="$1" out="$2"; shift 2
    local start end
    start=$(date +%s.%N)
    dotnet "$coordinator" sweep run "$work/sweep.yaml" --embedded --storage "$storage" --format json "$@" > "$out"
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.2f}')"
}

lscpu | grep -E "^(Model name|CPU family|Model:|Core)" >&2
results=()
for rep in $(seq 1 "$reps"); do
    shared=$(run "$work/shared-$rep" "$work/shared-$rep.json")
    alone=$(run "$work/alone-$rep" "$work/alone-$rep.json" --no-share)
    line=$(python3 - "$work/shared-$rep.json" "$work/alone-$rep.json" "$shared" "$alone" "$rep" <<'PY'
import json, sys
shared, alone = (json.load(open(p)) for p in sys.argv[1:3])
key = lambda t: json.dumps(t["params"], sort_keys=True)
a = {key(t): t for t in alone["trials"]}
pairs = [(t, a[key(t)]) for t in shared["trials"] if key(t) in a]
done = sum(1 for s, o in pairs if s["status"] == o["status"] == "completed")
diff = max((abs(s.get("val_accuracy", 0) - o.get("val_accuracy", 0)) for s, o in pairs), default=0)
same = sum(1 for s, o in pairs if s.get("val_accuracy") == o.get("val_accuracy"))
ws, wa = float(sys.argv[3]), float(sys.argv[4])
print(f"rep {sys.argv[5]}: {len(shared['trials'])} trials ({done} completed in both); shared {ws:.1f} s, no-share {wa:.1f} s, "
      f"ratio {wa / ws:.2f}x; validation accuracy equal in {same} of {len(pairs)}, largest difference {diff * 100:.2f} points")
PY
)
    echo "$line"
    results+=("$shared $alone")
done
printf '%s\n' "${results[@]}" | python3 -c "
import sys, statistics
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
print(f'median: shared {statistics.median(r[0] for r in rows):.1f} s, no-share {statistics.median(r[1] for r in rows):.1f} s, ratio {statistics.median(r[1] / r[0] for r in rows):.2f}x')"
