#!/usr/bin/env bash
# The one command that runs every test: starts throwaway RabbitMQ and PostgreSQL servers on 127.0.0.1
# (scripts/test-servers.sh), builds, runs `dotnet test Cluster.sln -c Release -m:4 --no-build "$@"`, stops the servers on every
# exit path, and exits with dotnet test's exit code.
#
#   scripts/test.sh                                   # everything
#   scripts/test.sh --filter "FullyQualifiedName~Foo"  # extra arguments go to dotnet test
set -euo pipefail

repo_root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$repo_root"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if ! command -v dotnet >/dev/null 2>&1; then
    for d in "${DOTNET_ROOT:-}" "$HOME/.dotnet" /usr/share/dotnet /usr/lib/dotnet /opt/dotnet; do
        if [[ -n "$d" && -x "$d/dotnet" ]]; then
            export PATH="$d:$PATH" DOTNET_ROOT="$d"
            break
        fi
    done
fi
command -v dotnet >/dev/null 2>&1 || { echo "test.sh: dotnet (the .NET 10 SDK) is not on PATH" >&2; exit 1; }

# The servers' folder is created here, before anything starts, so that the EXIT trap can always find
# and remove whatever got started, however far start-up got.
servers_dir="$(mktemp -d "${TMPDIR:-/tmp}/cluster-test-servers.XXXXXX")"
test_pid=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$test_pid" ]] && kill -0 "$test_pid" 2>/dev/null; then
        kill -TERM "$test_pid" 2>/dev/null || true
        wait "$test_pid" 2>/dev/null || true
    fi
    bash scripts/test-servers.sh stop "$servers_dir" || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Built before the tests, on its own. When `dotnet test` builds, MSBuild keeps each project on the node that first built
# it, so the integration tests' build waits for the node that is running the worker's unit tests, and the projects end up
# run one after another (28 min on 2 cores at stop 38). Built first, all four test projects run at once (-m:4); that
# saves little (27.5 and 28.9 min in two runs, BENCHMARKS.md): the suite is CPU-bound. It does report the build's time on
# its own, and a build that fails stops here, before any server starts.
test_args=("$@")
no_build=false
for arg in "$@"; do [[ "$arg" == "--no-build" ]] && no_build=true; done
if ! $no_build; then
    build_ms=$(date +%s%3N)
    dotnet build Cluster.sln -c Release -nologo -clp:ErrorsOnly </dev/null
    echo "built in $(($(date +%s%3N) - build_ms)) ms"
    test_args+=(--no-build)
    # The integration tests start ~350 coordinator and worker processes. Built, each JIT-compiles MassTransit, EF Core and
    # Npgsql as it starts (1.7 CPU-s for `coordinator workers` on AMD Zen 5); published ReadyToRun, as a deployment image
    # would be, 0.8 CPU-s. The tests run these copies (CLUSTER_IT_BIN, read by RepoPaths); where crossgen2 is not served
    # (its package exists for linux-x64 only), they run the built ones.
    if [[ "$(uname -m)" == "x86_64" ]]; then
        publish_ms=$(date +%s%3N)
        it_bin="$repo_root/artifacts/it-bin"
        publish=(-c Release -r linux-x64 --self-contained false -nologo -clp:ErrorsOnly)
        # ReadyToRun compiles every assembly once: the coordinator references the worker (embedded mode), so its publish
        # holds ReadyToRun copies of all the worker's assemblies. The worker is published as IL (its own deps.json,
        # runtimeconfig and appsettings; the coordinator's appsettings.json wins in its folder) and each of its assemblies
        # whose IL is byte for byte the coordinator's build's takes the compiled copy: all 78 of them at stop 43. Published
        # ReadyToRun on its own, the worker compiled the same 78 a second time (117 s for both publishes, 82 s so).
        # Where an assembly's IL differs, the worker keeps its IL and JIT-compiles it.
        coordinator_il="$repo_root/src/Coordinator/bin/Release/net10.0/linux-x64"
        shared=0
        # A stale compiled copy left by an earlier run is neither IL nor current: the worker's folder starts empty.
        rm -rf "$it_bin/gpu-worker"
        if dotnet publish src/Coordinator "${publish[@]}" -p:PublishReadyToRun=true -p:ErrorOnDuplicatePublishOutputFiles=false -o "$it_bin/coordinator" </dev/null &&
            dotnet publish src/GpuWorker "${publish[@]}" -o "$it_bin/gpu-worker" </dev/null; then
            for dll in "$it_bin/gpu-worker"/*.dll; do
                name="$(basename "$dll")"
                if [[ -f "$it_bin/coordinator/$name" && -f "$coordinator_il/$name" ]] && cmp -s "$dll" "$coordinator_il/$name"; then
                    cp "$it_bin/coordinator/$name" "$dll"
                    shared=$((shared + 1))
                fi
            done
            export CLUSTER_IT_BIN="$it_bin"
            echo "published ReadyToRun in $(($(date +%s%3N) - publish_ms)) ms: $it_bin ($shared of the worker's assemblies compiled once for both)"
        else
            echo "test.sh: ReadyToRun publish failed; the integration tests run the built programs" >&2
        fi
    fi
fi

start_ms=$(date +%s%3N)
server_env="$(bash scripts/test-servers.sh start "$servers_dir")"
eval "$server_env"
pg_port="${CLUSTER_TEST_POSTGRES#*Port=}"
echo "test servers up in $(($(date +%s%3N) - start_ms)) ms:" \
    "RabbitMQ 127.0.0.1:$CLUSTER_TEST_RABBITMQ_PORT (management :$CLUSTER_TEST_RABBITMQ_MANAGEMENT_PORT)," \
    "PostgreSQL 127.0.0.1:${pg_port%%;*}, folder $CLUSTER_TEST_SERVERS_DIR"

# Started in the background so that INT/TERM interrupt `wait` at once; cleanup() then stops dotnet
# test before the servers. stdin is /dev/null either way (CI has none).
test_log="$servers_dir/dotnet-test.log"
dotnet test Cluster.sln -c Release -m:4 "${test_args[@]}" </dev/null >"$test_log" 2>&1 &
test_pid=$!
# Streams the log while dotnet test runs; ends by itself once dotnet test has exited and the log is drained.
tail -n +1 -f --pid="$test_pid" "$test_log" &
tail_pid=$!
rc=0
wait "$test_pid" || rc=$?
test_pid=""
wait "$tail_pid" || true
# One closing line over all test projects ("N passed, N failed"), from dotnet test's per-project summaries.
awk '/(Passed|Failed)! +- +Failed: +[0-9]+, +Passed: +[0-9]+/ {
        gsub(",", ""); for (i = 1; i <= NF; i++) { if ($i == "Failed:") f += $(i + 1); if ($i == "Passed:") p += $(i + 1); if ($i == "Skipped:") s += $(i + 1) }
     } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$test_log"
exit "$rc"
