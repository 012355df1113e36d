#!/usr/bin/env bash
# Test-set accuracy of every strategy on Fashion-MNIST (BENCHMARKS.md, "Training accuracy"): `coordinator sweep run` on
# one-trial specs, resnet18-imagenet, embedded (one in-process worker), for (a) 1,000 training images and (b) all 60,000,
# the t10k set as the test set. Prints a markdown table (strategy, head, input size, images, test and validation accuracy,
# wall time) and keeps each run's JSON results and spec.
#
#   bench/fashion_accuracy.sh [--only REGEX] [--work DIR] [--no-build]
#
#   --only REGEX   run only the rows whose name matches (e.g. 'small' or 'full-fine-tune-all')
#   --work DIR     where the images, specs, storage and results go (default /tmp/cluster-fashion-accuracy)
#
# Needs: the .NET 10 SDK and Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
work=/tmp/cluster-fashion-accuracy
only=""
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) only="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "fashion_accuracy.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
fm=/usr/share/datasets/fashion-mnist
[[ -f "$fm/train-images-idx3-ubyte.gz" ]] || { echo "fashion_accuracy.sh: apt-get install -y dataset-fashion-mnist" >&2; exit 2; }
if [[ $build == 1 ]]; then
    dotnet build "$repo/src/Coordinator" -c Release -v quiet -nologo >/dev/null
fi
coordinator=(dotnet "$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll")
mkdir -p "$work/specs" "$work/results"
storage="$work/storage"

# The images, once: all 60,000 training images, the 10,000 test images, and the first 100 of each class as the small set.
if [[ ! -d "$work/train" ]]; then
    "${coordinator[@]}" dataset import-idx "$fm/train-images-idx3-ubyte.gz" "$fm/train-labels-idx1-ubyte.gz" "$work/train" --classes fashion-mnist --storage "$storage" >/dev/null
fi
if [[ ! -d "$work/test" ]]; then
    "${coordinator[@]}" dataset import-idx "$fm/t10k-images-idx3-ubyte.gz" "$fm/t10k-labels-idx1-ubyte.gz" "$work/test" --classes fashion-mnist --storage "$storage" >/dev/null
fi
if [[ ! -d "$work/train-1000" ]]; then
    for class in "$work/train"/*/; do
        name="$(basename "$class")"
        mkdir -p "$work/train-1000/$name"
        mapfile -t files < <(find "$class" -name '*.png' | sort)
        cp "${files[@]:0:100}" "$work/train-1000/$name/"
    done
fi

# name | train folder | strategy | extra spec lines (\n-separated) | "plan": only `sweep plan` it (print auto's decision)
rows=(
    "small-feature-extractor-logistic-224|train-1000|feature-extractor|head: logistic\ncutoff: avgpool\ninput_size: 224"
    "small-feature-extractor-knn-224|train-1000|feature-extractor|head: knn\ncutoff: avgpool\ninput_size: 224"
    "small-feature-extractor-logistic-64|train-1000|feature-extractor|head: logistic\ncutoff: avgpool\ninput_size: 64"
    "small-fine-tune-top-64|train-1000|fine-tune-top|cutoff: layer3\ninput_size: 64\nhead_epochs: 2\nepochs: 10\nlr: 0.01\nbackbone_lr_scale: 0.1\nschedule: cosine\nbatch_size: 32"
    "small-fine-tune-all-64|train-1000|fine-tune-all|input_size: 64\nepochs: 10\nlr: 0.01\nbackbone_lr_scale: 0.1\nschedule: cosine\nbatch_size: 32"
    "small-from-scratch-64|train-1000|from-scratch|input_size: 64\nepochs: 10\nlr: 0.05\nschedule: cosine\nbatch_size: 32"
    "full-feature-extractor-logistic-64|train|feature-extractor|head: logistic\ncutoff: avgpool\ninput_size: 64"
    "full-feature-extractor-mlp-64|train|feature-extractor|head: mlp\ncutoff: avgpool\ninput_size: 64\nepochs: 30\nbatch_size: 128"
    "full-fine-tune-top-64|train|fine-tune-top|cutoff: layer3\ninput_size: 64\nhead_epochs: 1\nepochs: 6\nlr: 0.01\nbackbone_lr_scale: 0.1\nschedule: cosine\nbatch_size: 64"
    "full-fine-tune-all-64|train|fine-tune-all|input_size: 64\nepochs: 3\nlr: 0.01\nbackbone_lr_scale: 0.1\nschedule: cosine\nbatch_size: 64"
    "full-from-scratch-64|train|from-scratch|input_size: 64\nepochs: 3\nlr: 0.05\nschedule: cosine\nbatch_size: 64"
    # strategy auto (issue 12): on 1,000 images it is run; on 60,000 only planned, its pick compared with the rows above.
    "small-auto-64|train-1000|auto|head: logistic\ninput_size: 64"
    # The full row has full-from-scratch-64's hyperparameters, so a from-scratch pick is that row's configuration.
    "full-auto-64|train|auto|head: logistic\ninput_size: 64\nepochs: 3\nlr: 0.05\nschedule: cosine\nbatch_size: 64|plan"
)

echo "| row | strategy | head | input | train images | test accuracy | validation accuracy | wall time (s) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for row in "${rows[@]}"; do
    IFS='|' read -r name train strategy extra mode <<<"$row"
    if [[ -n "$only" && ! "$name" =~ $only ]]; then
        continue
    fi
    spec="$work/specs/$name.yaml"
    {
        echo "name: $name"
        echo "dataset:"
        echo "  train: $work/$train"
        echo "  validation: 0.1"
        echo "  test: $work/test"
        echo "model: resnet18-imagenet"
        echo "strategy: $strategy"
        echo "optimizer: {name: sgd, momentum: 0.9}"
        echo "seed: 1"
        echo "segment_epochs: 1"
        printf '%b\n' "$extra"
    } > "$spec"
    # Defaults the rows above do not set.
    grep -q '^lr:' "$spec" || echo "lr: 0.001" >> "$spec"
    grep -q '^epochs:' "$spec" || echo "epochs: 1" >> "$spec"
    grep -q '^batch_size:' "$spec" || echo "batch_size: 64" >> "$spec"
    if [[ "${mode:-}" == plan ]]; then
        # auto's decision line (size, similarity, cell, pick) without training.
        decision=$("${coordinator[@]}" sweep plan "$spec" --storage "$storage" 2> "$work/results/$name.log" | grep '^auto:' || true)
        echo "| $name | planned only: ${decision:-failed: $(tail -1 "$work/results/$name.log")} |"
        continue
    fi
    start=$(date +%s.%N)
    if ! "${coordinator[@]}" sweep run "$spec" --storage "$storage" --format json > "$work/results/$name.json" 2> "$work/results/$name.log"; then
        echo "| $name | failed: $(tail -1 "$work/results/$name.log") |"
        continue
    fi
    end=$(date +%s.%N)
    /usr/bin/python3 - "$work/results/$name.json" "$start" "$end" "$strategy" "$train" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
trial = results["trials"][0]
p = trial["params"]
images = {"train": 60000, "train-1000": 1000}[sys.argv[5]]
# auto's rows show what it resolved to: the params hold the chosen strategy, not auto.
strategy = p["strategy"] if sys.argv[4] == "auto" else sys.argv[4]
shown = f"auto: {strategy}" if sys.argv[4] == "auto" else strategy
head = p.get("head", "") if strategy == "feature-extractor" else ""
print(f"| {results['name']} | {shown}{' at ' + p['cutoff'] if p.get('cutoff') else ''} | {head} | {p['input_size']} | {images} | "
      f"{trial.get('test_accuracy', 0):.2%} | {trial.get('val_accuracy', 0):.2%} | {float(sys.argv[3]) - float(sys.argv[2]):.0f} |")
PY
done
