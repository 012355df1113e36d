#!/usr/bin/env bash
# Many taps in one pass against a pass per tap (issue 12): the features of ResNet-18 (ImageNet weights) at layer2,
# layer3, layer4 and avgpool (pooled), at 224, of the bundled Fashion-MNIST sample (400 training + 200 test images).
#   one pass:   `sweep run` of a feature-extractor sweep over the four cutoffs (logistic head): the service sends each
#               shard once with the four taps; wall = the sets' first creation to their last completion
#   four passes: `extract --layer X` four times, one tap each: wall = the sum of each set's creation to completion
# Each in its own fresh storage, embedded (one in-process worker). Prints both walls, images/s (images x taps / wall)
# and their ratio, per repetition and the median. Run it on a quiet machine; needs: dotnet build -c Release.
#
#   bench/one_pass_bench.sh [--reps 3] [--input-size 224]
set -euo pipefail
reps=3
input_size=224
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps="$2"; shift 2 ;;
        --input-size) input_size="$2"; shift 2 ;;
        *) echo "one_pass_bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
repo="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
coordinator="$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll"
[[ -f "$coordinator" ]] || { echo "one_pass_bench.sh: build first: dotnet build -c Release" >&2; exit 2; }
work="$(mktemp -d "${TMPDIR:-/tmp}/one-pass.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -r "$repo/examples/fashion-sample" "$work/"
export DOTNET_CLI_TELEMETRY_OPTOUT=1
taps=(layer2 layer3 layer4 avgpool)
cat > "$work/cutoffs.yaml" <<EOF
name: four-cutoffs
dataset:
  train: fashion-sample/train
  validation: 0.2
  test: fashion-sample/test
model: resnet18-imagenet
weights: builtin
input_size: $input_size
strategy: feature-extractor
cutoff: [layer2, layer3, layer4, avgpool]
head: logistic
epochs: 1
batch_size: 32
seed: 7
search: {method: grid}
metric: {name: val_accuracy, mode: max}
parallelism: 1
EOF

# Extraction wall times from a storage's cluster.db: "span" (first created to last completed) or "sum" (each set's own).
walls() { # storage, span|sum
    python3 - "$1/cluster.db" "$2" <<'PY'
import sqlite3, sys, datetime
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT created_at, completed_at, image_count FROM feature_sets WHERE status = 'Complete'").fetchall()
t = lambda s: datetime.datetime.fromisoformat(s[:26])
if sys.argv[2] == "span":
    print(f"{(max(t(c) for _, c, _ in rows) - min(t(a) for a, _, _ in rows)).total_seconds():.2f} {sum(n for *_, n in rows)}")
else:
    print(f"{sum((t(c) - t(a)).total_seconds() for a, c, _ in rows):.2f} {sum(n for *_, n in rows)}")
PY
}

lscpu | grep -E "^(Model name|CPU family|Model:|Core)" >&2
results=()
for rep in $(seq 1 "$reps"); do
    one="$work/one-$rep"; four="$work/four-$rep"
    dotnet "$coordinator" sweep run "$work/cutoffs.yaml" --embedded --storage "$one" --format json > /dev/null
    for tap in "${taps[@]}"; do
        for split in train test; do
            dotnet "$coordinator" extract --dataset "$work/fashion-sample/$split" --layer "$tap" --input-size "$input_size" \
                --batch-size 32 --embedded --storage "$four" > /dev/null
        done
    done
    read -r one_wall one_images < <(walls "$one" span)
    read -r four_wall four_images < <(walls "$four" sum)
    line=$(python3 -c "print(f'rep $rep: one pass {$one_wall:.1f} s ({$one_images / $one_wall:.1f} images/s over {$one_images} set-images), four passes {$four_wall:.1f} s ({$four_images / $four_wall:.1f} images/s), ratio {$four_wall / $one_wall:.2f}x')")
    echo "$line"
    results+=("$one_wall $four_wall")
done
printf '%s\n' "${results[@]}" | python3 -c "
import sys, statistics
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
print(f'median: one pass {statistics.median(r[0] for r in rows):.1f} s, four passes {statistics.median(r[1] for r in rows):.1f} s, ratio {statistics.median(r[1] / r[0] for r in rows):.2f}x')"
