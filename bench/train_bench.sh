#!/usr/bin/env bash
# Training throughput (BENCHMARKS.md, "Training throughput"): images/s of a fine-tune-all epoch and of a fine-tune-top
# epoch at layer3 on cached activations, ResNet-18 (torchvision layout, random weights) at 224, batch 32, SGD momentum,
# ours (`coordinator sweep run`, embedded, one in-process worker) against the same loop in PyTorch 1.13
# (bench/peer_pytorch_train.py), interleaved, side by side in one run. Each run trains 2 epochs; the second epoch's
# rate is the figure (the first includes one-time costs: JIT, allocator warm-up). Prints one JSON line per measurement
# and a median table.
#
#   bench/train_bench.sh [--reps N] [--per-class N] [--work DIR] [--no-build]
#
# Needs: the .NET 10 SDK; Debian's python3-torch python3-torchvision python3-pil python3-numpy, dataset-fashion-mnist.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
py=/usr/bin/python3
reps=3
per_class=320
work=/tmp/cluster-train-bench
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps="$2"; shift 2 ;;
        --per-class) per_class="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "train_bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ $build == 1 ]]; then
    dotnet build "$repo/src/Coordinator" -c Release -v quiet -nologo >/dev/null
fi
coordinator=(dotnet "$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll")
mkdir -p "$work"
train="$work/photos-train-$per_class"
[[ -d "$train" ]] || "$py" "$here/make_photo_corpus.py" "$train" --per-class "$per_class" --seed 0 >/dev/null
validation="$work/photos-validation"
[[ -d "$validation" ]] || "$py" "$here/make_photo_corpus.py" "$validation" --per-class 32 --seed 1 >/dev/null
results="$work/results-$(date +%Y%m%d-%H%M%S).jsonl"

spec() {  # strategy extra
    cat <<YAML
name: train-bench-$1
dataset:
  train: $train
  validation: $validation
model: resnet18
weights: random
input_size: 224
strategy: $1
optimizer: {name: sgd, momentum: 0.9}
lr: 0.001
epochs: 2
batch_size: 32
segment_epochs: 2
seed: 0
$2
YAML
}
ours() {  # strategy extra
    local storage="$work/storage-$1-$RANDOM"
    spec "$1" "$2" > "$work/$1.yaml"
    "${coordinator[@]}" sweep run "$work/$1.yaml" --storage "$storage" --format json > "$work/$1.json"
    "$py" - "$storage" "$1" "$work/$1.json" <<'PY'
import json, sqlite3, sys, glob
storage, strategy, results = sys.argv[1], sys.argv[2], sys.argv[3]
trial = json.load(open(results))["trials"][0]["id"]
db = sqlite3.connect(glob.glob(f"{storage}/*.db")[0])
rows = db.execute("select epoch, images_per_second, seconds from epoch_metrics where trial_id = ? and split = 'train' order by epoch", (trial.upper(),)).fetchall()
if not rows:
    rows = db.execute("select epoch, images_per_second, seconds from epoch_metrics where lower(trial_id) = ? and split = 'train' order by epoch", (trial,)).fetchall()
epoch, rate, seconds = rows[-1]
print(json.dumps({"tool": "ours", "mode": strategy, "epoch": epoch, "images_per_s": round(rate, 2), "seconds": round(seconds, 3)}))
PY
    rm -rf "$storage"
}
peer() {  # mode
    "$py" "$here/peer_pytorch_train.py" "$train" --mode "$1" --epochs 2 | tail -1
}
for rep in $(seq 1 "$reps"); do
    ours fine-tune-all "" | tee -a "$results"
    peer all | tee -a "$results"
    ours fine-tune-top "cutoff: layer3
head_epochs: 0" | tee -a "$results"
    peer top | tee -a "$results"
done
"$py" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(tool, mode):
    v = [r["images_per_s"] for r in rows if r["tool"] == tool and r["mode"] == mode]
    return statistics.median(v), min(v), max(v)
print("| epoch | ours images/s (median, min-max) | PyTorch 1.13 images/s | ours / peer |")
print("| --- | --- | --- | --- |")
for mode in ("fine-tune-all", "fine-tune-top"):
    o, p = med("ours", mode), med("pytorch", mode)
    print(f"| {mode} | {o[0]:.1f} ({o[1]:.1f}-{o[2]:.1f}) | {p[0]:.1f} ({p[1]:.1f}-{p[2]:.1f}) | {o[0] / p[0]:.2f} |")
all_, top = med("ours", "fine-tune-all")[0], med("ours", "fine-tune-top")[0]
print(f"\nours fine-tune-top on cached layer3 activations / ours fine-tune-all: {top / all_:.2f}x")
PY
echo "raw: $results"
