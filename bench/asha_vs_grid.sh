#!/usr/bin/env bash
# ASHA against grid on one search space of 27 configurations: fine-tune-top of ImageNet's ResNet-18 on the bundled
# Fashion-MNIST sample (examples/fashion-sample: 320 training images, 80 held out for validation, 200 test), over
# cutoff {layer2, layer3, layer4} x lr {0.001, 0.003, 0.01} x backbone_lr_scale {0.1, 0.3, 1}, 9 epochs each.
# Grid trains all 27 to 9 epochs; ASHA (rungs 1, 3, 9, reduction 3) promotes as results arrive. Each runs embedded
# (one in-process worker) end to end with its own storage, so each extracts its own feature sets.
#
#   bench/asha_vs_grid.sh [--input-size 32]
#
# Prints each method's wall time and best validation accuracy (and that trial's test accuracy), and ASHA's share of
# the grid's time. Run it on a quiet machine. Needs a Release build: dotnet build -c Release.
set -euo pipefail
input_size=32
while [[ $# -gt 0 ]]; do
    case "$1" in
        --input-size) input_size="$2"; shift 2 ;;
        *) echo "asha_vs_grid.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
repo="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
coordinator="$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll"
[[ -f "$coordinator" ]] || { echo "asha_vs_grid.sh: build first: dotnet build -c Release" >&2; exit 2; }
work="$(mktemp -d "${TMPDIR:-/tmp}/asha-vs-grid.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -r "$repo/examples/fashion-sample" "$work/"
export DOTNET_CLI_TELEMETRY_OPTOUT=1

spec() { # name, search
    cat > "$work/$1.yaml" <<EOF
name: $1
dataset:
  train: fashion-sample/train
  validation: 0.2
  test: fashion-sample/test
model: resnet18-imagenet
weights: builtin
input_size: $input_size
strategy: fine-tune-top
cutoff: [layer2, layer3, layer4]
lr: [0.001, 0.003, 0.01]
backbone_lr_scale: [0.1, 0.3, 1.0]
optimizer: {name: sgd, momentum: 0.9}
schedule: cosine
epochs: 9
head_epochs: 1
batch_size: 32
seed: 7
search: $2
metric: {name: val_accuracy, mode: max}
parallelism: 1
EOF
}
spec grid "{method: grid}"
spec asha "{method: asha, min_epochs: 1, reduction: 3}"

lscpu | grep -E "^(Model name|CPU family|Model|Core)" >&2
declare -A seconds
for method in grid asha; do
    start=$(date +%s.%N)
    dotnet "$coordinator" sweep run "$work/$method.yaml" --embedded --storage "$work/storage-$method" --format json > "$work/$method.json"
    end=$(date +%s.%N)
    seconds[$method]=$(python3 -c "print(round($end - $start, 1))")
    python3 - "$work/$method.json" "$method" "${seconds[$method]}" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
trials = [t for t in results["trials"] if t["status"] in ("completed", "stopped")]
best = max(trials, key=lambda t: t.get("val_accuracy") or 0)
epochs = sum(t["epochs"] for t in results["trials"])
print(f"{sys.argv[2]}: {len(results['trials'])} trials, {epochs} epochs trained, wall {sys.argv[3]} s, "
      f"best val accuracy {best['val_accuracy']:.4f} (test {best.get('test_accuracy') or float('nan'):.4f}) with {best['params']}")
PY
done
python3 -c "print(f'asha / grid wall time: {${seconds[asha]} / ${seconds[grid]}:.2f}')"
