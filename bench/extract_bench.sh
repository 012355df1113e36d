#!/usr/bin/env bash
# Feature-extraction benchmark: `coordinator extract` (embedded, one in-process worker) against the PyTorch peer
# (torchvision + PIL + DataLoader), end to end and forward-only, ResNet-18 to avgpool, fp32 and bf16, side by side
# in one run. Results: a table on stdout, raw JSON lines in a results file. Figures in BENCHMARKS.md.
#
#   bench/extract_bench.sh [--reps N] [--data DIR] [--per-class N] [--results FILE] [--only REGEX]
#                          [--set KEY=VALUE]... [--no-build] [--max-load L] [--max-wait S]
#   bench/extract_bench.sh --fashion-mnist [--fm-dir DIR] [--fm-sizes 10000,35000,70000] [--fm-model M] [...]
#
#   --reps N          repetitions of every configuration (default 3); the table gives median, min and max
#   --data DIR        the photo-like JPEG corpus (ImageFolder); generated there once (default under /tmp)
#   --per-class N     corpus images per class, two classes (default 1000: 2,000 images)
#   --results FILE    JSON lines, one per measurement (default /tmp/cluster-extract-bench/results-<time>.jsonl)
#   --only REGEX      run only the configurations whose name matches (e.g. 'ours e2e')
#   --set KEY=VALUE   passed to every `coordinator` command (e.g. --set Worker:TorchThreads=1); repeatable
#   --no-build        use the existing Release build
#   --max-load L      before starting, wait while the 1-minute load average is above L (default 1.5) ...
#   --max-wait S      ... for at most S seconds (default 900), then run anyway (the results say how busy it was)
#   --peer FILE       the PyTorch peer script (default: bench/peer_pytorch_extract.py)
#   --fashion-mnist   the memory test instead: Fashion-MNIST's 70,000 images (train + t10k) imported as PNGs,
#                     extracted (bf16, shards of 2,000) at each of --fm-sizes images: peak RSS of the coordinator
#                     process from /usr/bin/time -v, its RSS sampled every 2 s, and the worker's resident and
#                     managed memory after every shard (from its log)
#   --fm-model M      the network for the memory test (default mobilenet_v3_small: the data path, buffers and
#                     shards are those of any model, and all three sizes take ~12 min instead of ~40 with resnet18)
#
# Needs: the .NET 10 SDK; Debian's python3-torch python3-torchvision python3-pil python3-numpy,
# dataset-fashion-mnist and time (apt-get install -y ...). Runs from any working directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
py=/usr/bin/python3
report="$here/extract_bench_report.py"
work_root=/tmp/cluster-extract-bench

reps=3
per_class=1000
data=""
results=""
only=""
build=1
max_load=1.5
max_wait=900
peer="$here/peer_pytorch_extract.py"
fashion=0
fm_dir=""
fm_sizes="10000,35000,70000"
fm_model=mobilenet_v3_small
sets=()

die() { echo "extract_bench: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --per-class) per_class="$2"; shift 2 ;;
        --results) results="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --set) sets+=(--set "$2"); shift 2 ;;
        --no-build) build=0; shift ;;
        --max-load) max_load="$2"; shift 2 ;;
        --max-wait) max_wait="$2"; shift 2 ;;
        --peer) peer="$2"; shift 2 ;;
        --fashion-mnist) fashion=1; shift ;;
        --fm-dir) fm_dir="$2"; shift 2 ;;
        --fm-sizes) fm_sizes="$2"; shift 2 ;;
        --fm-model) fm_model="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps '$reps' is not a positive number"
[[ "$per_class" =~ ^[1-9][0-9]*$ ]] || die "--per-class '$per_class' is not a positive number"

# --- prerequisites ---------------------------------------------------------------------------------------------
[[ -x "$py" ]] || die "$py is missing (Debian's python3)"
"$py" -c 'import torch, torchvision, PIL, numpy' 2>/dev/null \
    || die "Debian's PyTorch is missing: apt-get install -y python3-torch python3-torchvision python3-pil python3-numpy"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing: apt-get install -y time"
[[ -d /usr/share/datasets/fashion-mnist ]] || die "Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist"
[[ -f "$peer" ]] || die "--peer '$peer' does not exist"
command -v dotnet >/dev/null || die "dotnet (the .NET 10 SDK) is not on PATH"

mkdir -p "$work_root"
stamp="$(date +%Y%m%d-%H%M%S)"
results="${results:-$work_root/results-$stamp.jsonl}"
mkdir -p "$(dirname "$results")"
: >"$results"
scratch="$(mktemp -d "$work_root/run-$stamp-XXXX")"
cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT
# The coordinator runs embedded: nothing from the caller's environment may point it at a broker or a database.
unset RabbitMq__Host RabbitMq__Port Database__ConnectionString Cluster__Mode Cluster__StorageRoot || true
coordinator="$repo/src/Coordinator/bin/Release/net10.0/coordinator.dll"

# --- build -------------------------------------------------------------------------------------------------------
if [[ $build -eq 1 ]]; then
    log "building Release (dotnet build -c Release src/Coordinator)"
    dotnet build -c Release "$repo/src/Coordinator" -nologo -v q >"$scratch/build.log" 2>&1 \
        || { tail -30 "$scratch/build.log" >&2; die "the build failed"; }
fi
[[ -f "$coordinator" ]] || die "$coordinator is missing: build it (drop --no-build)"

# --- machine facts (written as the first JSON line) --------------------------------------------------------------
machine_line() {
    local torchsharp libtorch
    torchsharp="$(grep -o 'PackageVersion Include="TorchSharp" Version="[^"]*"' "$repo/Directory.Packages.props" | sed 's/.*Version="//; s/"//')"
    libtorch="$(grep -o 'PackageVersion Include="libtorch-cpu-linux-x64" Version="[^"]*"' "$repo/Directory.Packages.props" | sed 's/.*Version="//; s/"//')"
    MODEL="$(lscpu | sed -n 's/^Model name: *//p')" CORES="$(nproc)" \
    MEM="$(free -g | awk '/^Mem:/ {print $2}')" OS="$(. /etc/os-release && echo "$PRETTY_NAME")" \
    DOTNET="$(dotnet --version)" TORCHSHARP="$torchsharp" LIBTORCH="$libtorch" \
    COMMIT="$(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- src || echo '+uncommitted')" \
    PEER_SHA="$(sha256sum "$peer" | cut -c1-16)" SETS="${sets[*]:-}" REPS="$reps" \
    "$py" -c '
import json, os, torch, torchvision, PIL
print(json.dumps({"mode": "machine", "cpu": os.environ["MODEL"], "cores": int(os.environ["CORES"]),
    "memory_gib": int(os.environ["MEM"]), "os": os.environ["OS"], "dotnet_sdk": os.environ["DOTNET"],
    "torchsharp": os.environ["TORCHSHARP"], "libtorch": os.environ["LIBTORCH"], "pytorch": torch.__version__,
    "torchvision": torchvision.__version__, "pillow": PIL.__version__, "commit": os.environ["COMMIT"],
    "peer_sha256_16": os.environ["PEER_SHA"], "coordinator_sets": os.environ["SETS"], "reps": int(os.environ["REPS"]),
    "loadavg_at_start": open("/proc/loadavg").read().split()[:3]}, separators=(",", ":")))'
}

wait_for_quiet() {
    local waited=0 load1
    while true; do
        load1="$(cut -d' ' -f1 /proc/loadavg)"
        if awk -v l="$load1" -v m="$max_load" 'BEGIN { exit !(l <= m) }'; then
            log "1-minute load $load1 (≤ $max_load): starting"
            return
        fi
        if [[ $waited -ge $max_wait ]]; then
            log "1-minute load still $load1 after ${waited}s: running anyway (the results record how busy it was)"
            return
        fi
        log "1-minute load $load1 > $max_load: waiting (${waited}s of at most ${max_wait}s)"
        sleep 30
        waited=$((waited + 30))
    done
}

# measure CONFIG TOOL MODE PRECISION REP EXPECTED_IMAGES -- COMMAND...
# Runs COMMAND under /usr/bin/time in a scratch working directory, and appends one JSON line to the results.
measure() {
    local config="$1" tool="$2" mode="$3" precision="$4" rep="$5" expected="$6" stat_before stat_after load
    shift 7
    if [[ -n "$only" && ! "$config" =~ $only ]]; then
        return
    fi
    local dir="$scratch/cwd"
    rm -rf "$dir" && mkdir -p "$dir"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    stat_before="$(head -1 /proc/stat)"
    if ! (cd "$dir" && /usr/bin/time -f '%e %U %S %M' -o "$scratch/time" "$@" >"$scratch/stdout" 2>"$scratch/stderr"); then
        tail -20 "$scratch/stderr" >&2
        die "$config (rep $rep) failed: $*"
    fi
    stat_after="$(head -1 /proc/stat)"
    local extra=()
    [[ -n "$expected" ]] && extra=(--images-expected "$expected")
    "$py" "$report" record --config "$config" --tool "$tool" --mode "$mode" --precision "$precision" --rep "$rep" \
        --stdout "$scratch/stdout" --time "$scratch/time" --stat-before "$stat_before" --stat-after "$stat_after" \
        --load "$load" "${extra[@]}" >>"$results"
    tail -1 "$results" | "$py" -c 'import json,sys; r=json.loads(sys.stdin.read()); print("  %-36s rep %d: %7.1f images/s  (process %.1f s, other load %.2f cores)" % (r["config"], r["rep"], r["images_per_s"], r["process_wall_s"], r["foreign_cores"]))' >&2
    rm -rf "$dir" "$scratch"/storage-*
}

# The command line of one extraction by ours, into a fresh storage folder (a second run into the same storage would
# be answered from the feature cache).
ours_extract() { # PRECISION DATASET
    ours=(dotnet "$coordinator" extract --embedded --dataset "$2" --model resnet18 --precision "$1"
          --shard-size 1000 --batch-size 32 --storage "$(mktemp -d "$scratch/storage-XXXX")" --format json "${sets[@]}")
}

# --- the memory test ---------------------------------------------------------------------------------------------
if [[ $fashion -eq 1 ]]; then
    fm_dir="${fm_dir:-$work_root/fashion-mnist-png}"
    idx=/usr/share/datasets/fashion-mnist
    if [[ ! -f "$fm_dir/.complete" ]]; then
        rm -rf "$fm_dir"
        mkdir -p "$fm_dir"
        if dotnet "$coordinator" --help 2>/dev/null | grep -q '^ *dataset '; then
            importer="coordinator dataset import-idx"
            for part in train:train t10k:test; do
                dotnet "$coordinator" dataset import-idx "$idx/${part%%:*}-images-idx3-ubyte.gz" "$idx/${part%%:*}-labels-idx1-ubyte.gz" \
                    "$fm_dir/${part##*:}" --classes fashion-mnist --format json >/dev/null
            done
        else
            # This branch has no `dataset import-idx` command yet: the same tree, written by bench/import_idx.py.
            importer="bench/import_idx.py (no 'coordinator dataset import-idx' on this build)"
            for part in train:train t10k:test; do
                "$py" "$here/import_idx.py" "$idx/${part%%:*}-images-idx3-ubyte.gz" "$idx/${part%%:*}-labels-idx1-ubyte.gz" "$fm_dir/${part##*:}" >/dev/null
            done
        fi
        echo "$importer" >"$fm_dir/.complete"
        log "imported Fashion-MNIST into $fm_dir with $(cat "$fm_dir/.complete")"
    fi
    # One manifest over both parts (train first, then test), cut to each size: the same images, more of them.
    (cd "$fm_dir" && find train test -name '*.png' | LC_ALL=C sort | awk -F/ '{ print $0 "\t" $2 }') >"$scratch/all.tsv"
    total="$(wc -l <"$scratch/all.tsv")"
    [[ "$total" -eq 70000 ]] || die "$fm_dir holds $total PNGs, expected 70000 (delete it to re-import)"
    machine_line >>"$results"
    wait_for_quiet
    IFS=',' read -r -a sizes <<<"$fm_sizes"
    for size in "${sizes[@]}"; do
        [[ "$size" =~ ^[1-9][0-9]*$ && "$size" -le 70000 ]] || die "--fm-sizes: '$size' is not within 1..70000"
        head -n "$size" "$scratch/all.tsv" >"$scratch/manifest.tsv"
        storage="$(mktemp -d "$scratch/storage-XXXX")"
        log "memory test: extracting $size Fashion-MNIST images ($fm_model, bf16)"
        load="$(cut -d' ' -f1-3 /proc/loadavg)"
        stat_before="$(head -1 /proc/stat)"
        # --verbose: the worker logs its resident and managed memory after every shard.
        (cd "$scratch" && /usr/bin/time -v -o "$scratch/time-v" dotnet "$coordinator" extract --embedded --verbose --dataset "$fm_dir" \
            --manifest "$scratch/manifest.tsv" --model "$fm_model" --precision bf16 --shard-size 2000 --batch-size 32 \
            --storage "$storage" --format json "${sets[@]}" >"$scratch/stdout" 2>"$scratch/stderr") &
        runner=$!
        # RSS of the coordinator process (the child of /usr/bin/time) every 2 s.
        : >"$scratch/rss"
        start=$SECONDS
        while kill -0 "$runner" 2>/dev/null; do
            pid="$(pgrep -f -n "^dotnet $coordinator extract" || true)"
            if [[ -n "$pid" ]]; then
                rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
                [[ -n "$rss" ]] && echo "$((SECONDS - start)) $rss" >>"$scratch/rss"
            fi
            sleep 2
        done
        wait "$runner" || { tail -20 "$scratch/stderr" >&2; die "the memory test failed at $size images"; }
        stat_after="$(head -1 /proc/stat)"
        awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; w = s }
                    /User time/ { u = $2 } /System time/ { y = $2 } /Maximum resident set size/ { m = $2 }
                    END { print w, u, y, m }' "$scratch/time-v" >"$scratch/time"
        "$py" "$report" record --config "fashion-mnist $size" --tool ours --mode memory --precision bf16 --rep 1 \
            --stdout "$scratch/stdout" --time "$scratch/time" --stat-before "$stat_before" --stat-after "$stat_after" \
            --load "$load" --images-expected "$size" --rss-samples "$scratch/rss" --shard-log "$scratch/stderr" >>"$results"
        tail -1 "$results" | "$py" -c 'import json,sys; r=json.loads(sys.stdin.read()); print("  %6d images: peak RSS %.0f MiB, %.1f images/s" % (r["images"], r["peak_rss_mib"], r["images_per_s"]))' >&2
        rm -rf "$storage"
    done
    echo
    "$py" "$report" memory "$results"
    echo
    echo "raw results: $results"
    exit 0
fi

# --- the corpus --------------------------------------------------------------------------------------------------
data="${data:-$work_root/photos-256-q90-2x$per_class}"
images=$((2 * per_class))
if [[ ! -f "$data/.complete" ]]; then
    log "generating $images photo-like 256x256 JPEGs (quality 90) in $data"
    rm -rf "$data"
    "$py" "$here/make_photo_corpus.py" "$data" --per-class "$per_class" --size 256 --quality 90 >"$data.json"
    mv "$data.json" "$data/.complete"
fi
log "corpus: $data ($(cat "$data/.complete"))"

# --- the runs ----------------------------------------------------------------------------------------------------
machine_line >>"$results"
wait_for_quiet
peer_out="$scratch/peer-features.npy"
for rep in $(seq 1 "$reps"); do
    log "repetition $rep of $reps"
    # Interleaved, so that a change in the machine's load falls on every configuration alike.
    ours_extract fp32 "$data"
    measure "ours e2e fp32" ours end-to-end fp32 "$rep" "$images" -- "${ours[@]}"
    measure "peer e2e fp32 workers=2" pytorch end-to-end fp32 "$rep" "$images" -- \
        "$py" "$peer" "$data" --precision fp32 --workers 2 --threads 2 --out "$peer_out"
    measure "peer e2e fp32 workers=1" pytorch end-to-end fp32 "$rep" "$images" -- \
        "$py" "$peer" "$data" --precision fp32 --workers 1 --threads 2 --out "$peer_out"
    ours_extract bf16 "$data"
    measure "ours e2e bf16" ours end-to-end bf16 "$rep" "$images" -- "${ours[@]}"
    measure "peer e2e bf16+cl workers=2" pytorch end-to-end bf16 "$rep" "$images" -- \
        "$py" "$peer" "$data" --precision bf16 --channels-last --workers 2 --threads 2 --out "$peer_out"
    measure "peer e2e bf16+cl workers=1" pytorch end-to-end bf16 "$rep" "$images" -- \
        "$py" "$peer" "$data" --precision bf16 --channels-last --workers 1 --threads 2 --out "$peer_out"
    measure "ours forward-only fp32" ours forward-only fp32 "$rep" "" -- \
        dotnet "$coordinator" models bench resnet18 --precision fp32 --batch-size 32 --seconds 20 --format json "${sets[@]}"
    measure "peer forward-only fp32" pytorch forward-only fp32 "$rep" "" -- \
        "$py" "$peer" "$data" --precision fp32 --threads 2 --forward-only
    measure "ours forward-only bf16" ours forward-only bf16 "$rep" "" -- \
        dotnet "$coordinator" models bench resnet18 --precision bf16 --batch-size 32 --seconds 20 --format json "${sets[@]}"
    measure "peer forward-only bf16+cl" pytorch forward-only bf16 "$rep" "" -- \
        "$py" "$peer" "$data" --precision bf16 --channels-last --threads 2 --forward-only
done

echo
"$py" "$report" table "$results"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw results: $results"
