#!/usr/bin/env bash
# Throwaway RabbitMQ and PostgreSQL servers for the test run, on 127.0.0.1 only.
#
# Usage (as a command):
#   eval "$(scripts/test-servers.sh start)"   # stdout: `export NAME=value` lines; logs go to stderr
#   scripts/test-servers.sh start DIR          # use DIR (an empty folder, e.g. from mktemp -d) as the state folder
#   scripts/test-servers.sh stop [DIR]         # DIR defaults to $CLUSTER_TEST_SERVERS_DIR; idempotent
#   scripts/test-servers.sh crash-restart rabbitmq|postgres [DIR]
#                                              # SIGKILL the server (PostgreSQL: an immediate shutdown, which is
#                                              # the same crash to its clients), start it again on the same ports
#                                              # and data, return once it answers (the chaos tests' fault)
#
# Usage (sourced; never changes the caller's shell options):
#   source scripts/test-servers.sh
#   cluster_test_servers_start   # exports the variables below into the current shell
#   cluster_test_servers_stop
#
# Exported variables (also written to "$CLUSTER_TEST_SERVERS_DIR/env"):
#   CLUSTER_TEST_RABBITMQ_HOST             127.0.0.1
#   CLUSTER_TEST_RABBITMQ_PORT             AMQP port
#   CLUSTER_TEST_RABBITMQ_TLS_PORT         AMQPS port (TLS listener, certificate for 127.0.0.1 and localhost)
#   CLUSTER_TEST_RABBITMQ_TLS_CA           PEM of the throwaway CA that signed the broker's certificate
#   CLUSTER_TEST_RABBITMQ_TLS_CLIENT_CERT  PKCS#12 client certificate the same CA signed (the listener requires one)
#   CLUSTER_TEST_RABBITMQ_TLS_CLIENT_PASSWORD  its password (throwaway, like the CA)
#   CLUSTER_TEST_RABBITMQ_USER             guest (administrator; works from loopback only)
#   CLUSTER_TEST_RABBITMQ_PASSWORD         guest
#   CLUSTER_TEST_RABBITMQ_MANAGEMENT_PORT  HTTP management API port (create/delete vhosts per test)
#   CLUSTER_TEST_RABBITMQCTL               a rabbitmqctl wrapper bound to this node (debugging aid)
#   CLUSTER_TEST_POSTGRES                  Npgsql connection string: superuser postgres, database postgres
#   CLUSTER_TEST_SERVERS_DIR               the state folder (data, logs, sockets); removed by stop
#
# Per-test isolation:
#   RabbitMQ:   PUT    http://127.0.0.1:$MGMT/api/vhosts/{vhost}              (guest/guest, body {})
#               PUT    http://127.0.0.1:$MGMT/api/permissions/{vhost}/guest   body {"configure":".*","write":".*","read":".*"}
#               DELETE http://127.0.0.1:$MGMT/api/vhosts/{vhost}
#   PostgreSQL: CREATE DATABASE x; ... DROP DATABASE x WITH (FORCE);
#
# Start-up: own epmd (own port), RabbitMQ node (own name, cookie, AMQP/management/distribution ports)
# and PostgreSQL (initdb -A trust -U postgres, pg_ctl -w) in a mktemp -d folder; a start that fails
# cleans up after itself and prints the servers' logs. Stop: `pg_ctl -m immediate`, then SIGKILL to
# every process whose working directory lies in the folder, then the folder is removed.
#
# Requirements: Debian 12. As root, missing packages are installed with apt-get and the servers run as
# the `rabbitmq` and `postgres` users; as another user the packages must already be installed and the
# servers run as that user. $TMPDIR (default /tmp) must be reachable by the rabbitmq and postgres users.

_CTS_SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"

# ---------------------------------------------------------------------------------------------------
# Sourced use: thin wrappers that run this file as a separate process.
# ---------------------------------------------------------------------------------------------------
cluster_test_servers_start() {
    local _cts_out
    _cts_out="$(bash "$_CTS_SCRIPT" start "$@")" || return $?
    eval "$_cts_out"
}

cluster_test_servers_stop() {
    bash "$_CTS_SCRIPT" stop "${1:-${CLUSTER_TEST_SERVERS_DIR:-}}" || return $?
    unset CLUSTER_TEST_RABBITMQ_HOST CLUSTER_TEST_RABBITMQ_PORT CLUSTER_TEST_RABBITMQ_USER \
        CLUSTER_TEST_RABBITMQ_PASSWORD CLUSTER_TEST_RABBITMQ_MANAGEMENT_PORT CLUSTER_TEST_RABBITMQCTL \
        CLUSTER_TEST_RABBITMQ_TLS_PORT CLUSTER_TEST_RABBITMQ_TLS_CA CLUSTER_TEST_RABBITMQ_TLS_CLIENT_CERT \
        CLUSTER_TEST_RABBITMQ_TLS_CLIENT_PASSWORD CLUSTER_TEST_POSTGRES CLUSTER_TEST_SERVERS_DIR
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    return 0
fi

# ---------------------------------------------------------------------------------------------------
# Command use.
# ---------------------------------------------------------------------------------------------------
set -euo pipefail

readonly RABBITMQ_SBIN=/usr/lib/rabbitmq/bin
readonly MARKER=.cluster-test-servers
readonly RABBITMQ_BOOT_DEADLINE_S=${CLUSTER_TEST_RABBITMQ_BOOT_DEADLINE_S:-180}

log() { printf '[test-servers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now_ms() { date +%s%3N; }

# --- packages --------------------------------------------------------------------------------------

pg_bindir() {
    # The newest installed PostgreSQL server (Debian 12: /usr/lib/postgresql/15/bin).
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [[ -x "$d/postgres" && -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/pg_isready" ]]; then echo "$d"; fi
    done | sort -V | tail -n 1
}

# True when Debian package $1 is fully installed (not merely unpacked by an apt run still going on).
pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

missing_packages() {
    local missing=() bindir
    if [[ ! -x "$RABBITMQ_SBIN/rabbitmq-server" ]] || ! pkg_installed rabbitmq-server; then
        missing+=(rabbitmq-server)
    fi
    bindir="$(pg_bindir)"
    if [[ -z "$bindir" ]] || ! pkg_installed "postgresql-$(basename "$(dirname "$bindir")")"; then
        missing+=(postgresql)
    fi
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
    # Not a server: the real Fashion-MNIST files one IDX import test reads (it is skipped, saying so, without them).
    [[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]] || missing+=(dataset-fashion-mnist)
    # Not a server either: a font, which the sweep report's SVG plots (ScottPlot on SkiaSharp) measure and name their text in.
    pkg_installed fonts-dejavu-core || missing+=(fonts-dejavu-core)
    printf '%s\n' "${missing[@]}"
}

apt_get() {
    # Waits for a concurrent apt/dpkg (DPkg::Lock::Timeout) instead of failing on the lock.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 -o Dpkg::Use-Pty=0 "$@"
}

install_packages() {
    local pkgs=("$@")
    [[ "$(id -u)" == 0 ]] || die "missing packages (${pkgs[*]}); run as root or: sudo apt-get install -y ${pkgs[*]}"
    log "installing ${pkgs[*]} with apt-get"
    (
        set -euo pipefail
        # Keep the packages' own services (system RabbitMQ, the PostgreSQL 'main' cluster, epmd) from
        # starting: invoke-rc.d and deb-systemd-invoke both honour policy-rc.d. Ours run on their own
        # ports anyway, so this only avoids wasted CPU and listeners we did not ask for.
        created_policy=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            created_policy=1
        fi
        trap '[[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d' EXIT
        export DEBIAN_FRONTEND=noninteractive
        try=1
        until apt_get update -qq >&2; do
            ((try++ < 36)) || exit 1
            log "apt-get update failed (lock held by another apt run?); retrying in 5 s"
            sleep 5
        done
        apt_get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
    ) || die "apt-get install ${pkgs[*]} failed"
}

# --- ports -----------------------------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints N distinct free loopback ports, below the kernel's ephemeral range and never a default port.
pick_ports() {
    local n=$1 lo hi range_lo p i picked=() tries=0
    range_lo=32768
    if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
        read -r range_lo _ </proc/sys/net/ipv4/ip_local_port_range || true
    fi
    lo=20000 hi=$((range_lo - 1))
    if ((hi - lo < 2000)); then lo=40000 hi=59999; fi   # unusual ephemeral range: take a fixed band
    while ((${#picked[@]} < n)); do
        ((tries++ < 1000)) || die "could not find $n free ports"
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        case $p in 4369 | 5432 | 5672 | 15672 | 25672 | 35672) continue ;; esac
        for i in "${picked[@]}"; do [[ $i == "$p" ]] && continue 2; done
        port_in_use "$p" && continue
        picked+=("$p")
    done
    echo "${picked[@]}"
}

# --- processes -------------------------------------------------------------------------------------

# Pids of every process whose working directory lies inside folder $1. Every process we start runs
# there (the RabbitMQ node, erl_child_setup, inet_gethost, epmd, the postmaster and its backends), and
# nothing else does, so this finds exactly ours, including those that called setsid themselves or were
# re-parented. One `find` instead of a readlink per process: forking is slow in some sandboxes.
ours_pids() {
    local dir=$1 f
    find /proc/[0-9]*/cwd -maxdepth 0 \( -lname "$dir/*" -o -lname "$dir" -o -lname "$dir (deleted)" \) \
        2>/dev/null | while read -r f; do f="${f#/proc/}"; echo "${f%/cwd}"; done
    return 0
}

# kill_ours DIR GRACE_S: SIGTERM to our processes, SIGKILL to whatever is left after GRACE_S seconds
# (GRACE_S 0: SIGKILL straight away).
kill_ours() {
    local dir=$1 grace=$2 pids p alive deadline
    pids="$(ours_pids "$dir")"
    [[ -n "$pids" ]] || return 0
    if ((grace > 0)); then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null
        deadline=$(($(now_ms) + grace * 1000))
        while :; do
            alive=""
            for p in $pids; do kill -0 "$p" 2>/dev/null && alive+=" $p"; done
            [[ -n "$alive" ]] || break
            (($(now_ms) < deadline)) || break
            sleep 0.1
        done
    fi
    # Survivors, and anything started while shutting down (e.g. the node's disk monitor shell).
    alive="$(ours_pids "$dir")"
    if [[ -n "$alive" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $alive 2>/dev/null
        deadline=$(($(now_ms) + 5000))
        while [[ -n "$(ours_pids "$dir")" ]] && (($(now_ms) < deadline)); do sleep 0.1; done
    fi
    return 0
}

# Prints the command prefix that runs a program as user $1 (nothing when we are not root).
as_user_prefix() {
    if [[ "$(id -u)" == 0 && "$1" != root ]]; then
        echo "setpriv --reuid=$1 --regid=$1 --init-groups"
    fi
}

# The users the servers run as: rabbitmq and postgres under root, otherwise the caller.
server_users() {
    if [[ "$(id -u)" == 0 ]]; then echo "rabbitmq postgres"; else echo "$(id -un) $(id -un)"; fi
}

# The servers get a clean environment: nothing of the caller's (PGPORT, PGDATA, RABBITMQ_*, ERL_*)
# leaks into them; each gets what it needs explicitly.
CLEAN_ENV="env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8"

# start_detached SIDFILE LOG CMD...: starts CMD in a new session, detached; writes the session id
# (= the pid of its leader, = its process group) to SIDFILE.
start_detached() {
    local sidfile=$1 log=$2
    shift 2
    setsid -f sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$sidfile" "$@" </dev/null >>"$log" 2>&1
}

# start_rabbitmq_node DIR USER: starts the node of state folder DIR in its own session (id in rabbitmq.sid).
start_rabbitmq_node() {
    local dir=$1 user=$2
    # shellcheck disable=SC2046
    (cd "$dir/rabbitmq" && start_detached "$dir/rabbitmq.sid" "$dir/rabbitmq/log/stdout.log" \
        $(as_user_prefix "$user") $CLEAN_ENV sh -c '. ./node.env; exec '"$RABBITMQ_SBIN"'/rabbitmq-server')
}

# pg_ctl_as DIR USER ARGS...: pg_ctl on the data folder of state folder DIR, as USER (the caller redirects).
pg_ctl_as() {
    local pdir=$1/postgres user=$2
    shift 2
    # shellcheck disable=SC2046
    (cd "$pdir" && $(as_user_prefix "$user") $CLEAN_ENV HOME="$pdir" "$(pg_bindir)/pg_ctl" -D "$pdir/data" "$@")
}

# --- start -----------------------------------------------------------------------------------------

cmd_start() {
    local dir=${1:-}
    local t0 t_rmq t_pg
    t0=$(now_ms)

    local missing
    missing="$(missing_packages)"
    if [[ -n "$missing" ]]; then
        # shellcheck disable=SC2086
        install_packages $missing
        missing="$(missing_packages)"
        [[ -z "$missing" ]] || die "still missing after apt-get: $missing"
    fi
    local t_installed
    t_installed=$(now_ms)

    if [[ -z "$dir" ]]; then
        dir="$(readlink -f "$(mktemp -d "${TMPDIR:-/tmp}/cluster-test-servers.XXXXXX")")"
    else
        [[ -d "$dir" ]] || die "state folder $dir does not exist"
        [[ -z "$(ls -A "$dir")" ]] || die "state folder $dir is not empty"
        dir="$(readlink -f "$dir")"
    fi
    touch "$dir/$MARKER"
    chmod 755 "$dir"   # the rabbitmq and postgres users must be able to reach their sub-folders
    # Any failure from here on: stop whatever came up and remove the folder.
    trap 'rc=$?; if ((rc != 0)); then log "start failed (exit $rc); cleaning up"; dump_logs "'"$dir"'"; cmd_stop "'"$dir"'"; fi' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local ports amqp_port mgmt_port dist_port epmd_port pg_port tls_port
    ports="$(pick_ports 6)"
    read -r amqp_port mgmt_port dist_port epmd_port pg_port tls_port <<<"$ports"

    local rmq_user pg_user
    read -r rmq_user pg_user <<<"$(server_users)"
    id "$rmq_user" >/dev/null 2>&1 || die "user $rmq_user does not exist"
    id "$pg_user" >/dev/null 2>&1 || die "user $pg_user does not exist"

    # ---- RabbitMQ ----
    local rdir="$dir/rabbitmq" node cookie
    node="cluster-test-$$-${RANDOM}@localhost"
    cookie="CT$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)"
    mkdir -p "$rdir/home" "$rdir/mnesia" "$rdir/log"
    printf '%s' "$cookie" >"$rdir/home/.erlang.cookie"
    chmod 400 "$rdir/home/.erlang.cookie"
    : >"$rdir/rabbitmq-env.conf"     # keeps /etc/rabbitmq/rabbitmq-env.conf out
    echo '[rabbitmq_management].' >"$rdir/enabled_plugins"
    echo '[].' >"$rdir/advanced.config"
    make_tls_files "$rdir/tls"
    cat >"$rdir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$amqp_port
# AMQPS beside AMQP, for the tests of RabbitMq:UseTls (a throwaway CA; the certificate names 127.0.0.1 and localhost).
# Mutual TLS: a client must present a certificate the same CA signed (RabbitMq:TlsClientCertificate).
listeners.ssl.default = 127.0.0.1:$tls_port
ssl_options.cacertfile = $rdir/tls/ca.pem
ssl_options.certfile = $rdir/tls/server.pem
ssl_options.keyfile = $rdir/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
management.tcp.ip = 127.0.0.1
management.tcp.port = $mgmt_port
loopback_users.guest = true
log.console = false
log.file.level = info
# Queue counts in the management API (which the tests read) refresh every 0.5 s instead of 5 s.
collect_statistics_interval = 500
EOF
    # Everything the node and its CLI tools need, in one file (sourced by the wrappers below).
    local erl_args="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
    cat >"$rdir/node.env" <<EOF
export HOME=$(printf %q "$rdir/home")
export ERL_EPMD_PORT=$epmd_port
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_NODENAME=$(printf %q "$node")
export RABBITMQ_USE_LONGNAME=false
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$amqp_port
export RABBITMQ_DIST_PORT=$dist_port
export RABBITMQ_CONF_ENV_FILE=$(printf %q "$rdir/rabbitmq-env.conf")
export RABBITMQ_CONFIG_FILE=$(printf %q "$rdir/rabbitmq.conf")
export RABBITMQ_ADVANCED_CONFIG_FILE=$(printf %q "$rdir/advanced.config")
export RABBITMQ_ENABLED_PLUGINS_FILE=$(printf %q "$rdir/enabled_plugins")
export RABBITMQ_MNESIA_BASE=$(printf %q "$rdir/mnesia")
export RABBITMQ_LOG_BASE=$(printf %q "$rdir/log")
export RABBITMQ_PID_FILE=$(printf %q "$rdir/rabbit.pid")
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=$(printf %q "$erl_args")
export RABBITMQ_CTL_ERL_ARGS=$(printf %q "-kernel inet_dist_use_interface {127,0,0,1}")
export RABBITMQ_CTL_DIST_PORT_MIN=$((dist_port + 1))
export RABBITMQ_CTL_DIST_PORT_MAX=$((dist_port + 10))
EOF
    mkdir -p "$dir/bin"
    local tool
    for tool in rabbitmqctl rabbitmq-diagnostics rabbitmq-plugins; do
        cat >"$dir/bin/$tool" <<EOF
#!/usr/bin/env bash
# $tool bound to the throwaway node $node
set -euo pipefail
cd $(printf %q "$rdir")
prefix=()
if [[ "\$(id -u)" == 0 && "$rmq_user" != root ]]; then
    prefix=(setpriv --reuid=$rmq_user --regid=$rmq_user --init-groups)
fi
exec "\${prefix[@]}" $CLEAN_ENV sh -c '. ./node.env; exec "\$0" "\$@"' $RABBITMQ_SBIN/$tool "\$@"
EOF
        chmod 755 "$dir/bin/$tool"
    done
    chown -R "$rmq_user:" "$rdir"

    # Our own epmd, loopback only, on its own port: no clash with a system epmd/RabbitMQ on 4369, and
    # no daemon left behind (an Erlang VM would otherwise start `epmd -daemon` outside our session).
    local rmq_as pg_as
    rmq_as="$(as_user_prefix "$rmq_user")"
    pg_as="$(as_user_prefix "$pg_user")"
    # shellcheck disable=SC2086
    (cd "$rdir" && start_detached "$dir/epmd.sid" "$rdir/log/epmd.log" \
        $rmq_as $CLEAN_ENV ERL_EPMD_ADDRESS=127.0.0.1 epmd -address 127.0.0.1 -port "$epmd_port" -relaxed_command_check)
    wait_for "epmd on port $epmd_port" 20 "$dir/epmd.sid" port_in_use "$epmd_port"

    start_rabbitmq_node "$dir" "$rmq_user"

    # ---- PostgreSQL (started while RabbitMQ boots) ----
    local pdir="$dir/postgres" bindir
    bindir="$(pg_bindir)"
    mkdir -p "$pdir/data" "$pdir/sock"
    chown -R "$pg_user:" "$pdir"
    chmod 700 "$pdir/data"
    # shellcheck disable=SC2086
    (cd "$pdir" && $pg_as $CLEAN_ENV HOME="$pdir" "$bindir/initdb" -D "$pdir/data" -A trust -U postgres \
        -E UTF8 --locale=C --no-sync --no-instructions >"$pdir/initdb.log" 2>&1) ||
        { cat "$pdir/initdb.log" >&2; die "initdb failed"; }
    cat >>"$pdir/data/postgresql.conf" <<EOF

# cluster test server (throwaway): loopback only, own port and socket folder, no durability
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pdir/sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
EOF
    # pg_ctl detaches the postmaster into its own session (no ^C from our terminal reaches it).
    pg_ctl_as "$dir" "$pg_user" -l "$pdir/postgres.log" -w -t 60 start </dev/null >"$pdir/pg_ctl.log" 2>&1 ||
        { cat "$pdir/pg_ctl.log" "$pdir/postgres.log" >&2 2>/dev/null || true; die "PostgreSQL did not start"; }
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres -t 10 ||
        die "PostgreSQL is not reachable on 127.0.0.1:$pg_port"
    t_pg=$(now_ms)

    # ---- wait for RabbitMQ: the aliveness test declares, publishes to and consumes from a queue ----
    wait_for "RabbitMQ (node $node)" "$RABBITMQ_BOOT_DEADLINE_S" "$dir/rabbitmq.sid" \
        rabbitmq_alive "$mgmt_port" "$amqp_port"
    t_rmq=$(now_ms)

    local env_file="$dir/env"
    {
        echo "export CLUSTER_TEST_RABBITMQ_HOST=127.0.0.1"
        echo "export CLUSTER_TEST_RABBITMQ_PORT=$amqp_port"
        echo "export CLUSTER_TEST_RABBITMQ_TLS_PORT=$tls_port"
        echo "export CLUSTER_TEST_RABBITMQ_TLS_CA=$(printf %q "$rdir/tls/ca.pem")"
        echo "export CLUSTER_TEST_RABBITMQ_TLS_CLIENT_CERT=$(printf %q "$rdir/tls/client.p12")"
        echo "export CLUSTER_TEST_RABBITMQ_TLS_CLIENT_PASSWORD=$(printf %q "$TLS_CLIENT_PASSWORD")"
        echo "export CLUSTER_TEST_RABBITMQ_USER=guest"
        echo "export CLUSTER_TEST_RABBITMQ_PASSWORD=guest"
        echo "export CLUSTER_TEST_RABBITMQ_MANAGEMENT_PORT=$mgmt_port"
        echo "export CLUSTER_TEST_RABBITMQCTL=$(printf %q "$dir/bin/rabbitmqctl")"
        echo "export CLUSTER_TEST_POSTGRES=$(printf %q "Host=127.0.0.1;Port=$pg_port;Username=postgres;Database=postgres")"
        echo "export CLUSTER_TEST_SERVERS_DIR=$(printf %q "$dir")"
    } >"$env_file"
    chmod 644 "$env_file"

    log "RabbitMQ 127.0.0.1:$amqp_port (management :$mgmt_port, node $node, epmd :$epmd_port)," \
        "PostgreSQL 127.0.0.1:$pg_port; folder $dir"
    log "timings: packages $((t_installed - t0)) ms, PostgreSQL up after $((t_pg - t_installed)) ms," \
        "RabbitMQ up after $((t_rmq - t_installed)) ms"
    trap - EXIT INT TERM
    cat "$env_file"
}

# The client certificate's PKCS#12 password: as throwaway as the CA (the files live and die with the test servers).
TLS_CLIENT_PASSWORD=cluster-test-client

# make_tls_files DIR: a throwaway CA, a broker certificate it signed (valid for 127.0.0.1 and localhost) and a client
# certificate it signed (PKCS#12, what RabbitMq:TlsClientCertificate reads), each valid for a week.
make_tls_files() {
    local tls=$1
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 7 -subj "/CN=cluster-test-ca" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl: CA"; }
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
        -keyout "$tls/server.key" -out "$tls/server.csr" >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl: request"; }
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 7 -sha256 \
        -extfile "$tls/server.ext" -out "$tls/server.pem" >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl: certificate"; }
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=cluster-test-client" \
        -keyout "$tls/client.key" -out "$tls/client.csr" >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl: client request"; }
    printf 'extendedKeyUsage=clientAuth\n' >"$tls/client.ext"
    openssl x509 -req -in "$tls/client.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 7 -sha256 \
        -extfile "$tls/client.ext" -out "$tls/client.pem" >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl: client certificate"; }
    openssl pkcs12 -export -in "$tls/client.pem" -inkey "$tls/client.key" -passout "pass:$TLS_CLIENT_PASSWORD" \
        -out "$tls/client.p12" >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "openssl: client PKCS#12"; }
    chmod 644 "$tls/ca.pem" "$tls/client.p12"
}

# wait_for WHAT DEADLINE_S SIDFILE CHECK ARGS...: polls CHECK every 0.2 s; fails early if the session died.
wait_for() {
    local what=$1 deadline_s=$2 sidfile=$3
    shift 3
    local deadline=$(($(now_ms) + deadline_s * 1000)) sid
    until "$@"; do
        sid=""
        [[ -f "$sidfile" ]] && read -r sid <"$sidfile"
        if [[ -n "$sid" ]] && ! kill -0 "$sid" 2>/dev/null; then
            die "$what exited during start-up"
        fi
        (($(now_ms) < deadline)) || die "$what not up after ${deadline_s} s"
        sleep 0.2
    done
}

rabbitmq_alive() {
    local mgmt_port=$1 amqp_port=$2 body
    body="$(curl -fsS --max-time 5 -u guest:guest "http://127.0.0.1:$mgmt_port/api/aliveness-test/%2F" 2>/dev/null)" || return 1
    [[ "$body" == *'"ok"'* ]] || return 1
    port_in_use "$amqp_port"
}

dump_logs() {
    local dir=$1 f
    for f in "$dir"/rabbitmq/log/*.log "$dir"/postgres/*.log; do
        [[ -s "$f" ]] || continue
        log "---- last lines of $f ----"
        tail -n 40 "$f" >&2 || true
    done
}

# --- stop ------------------------------------------------------------------------------------------

cmd_stop() {
    local dir=${1:-${CLUSTER_TEST_SERVERS_DIR:-}}
    if [[ -z "$dir" ]]; then
        log "stop: no folder given and CLUSTER_TEST_SERVERS_DIR is unset; nothing to stop"
        return 0
    fi
    if [[ ! -d "$dir" ]]; then
        return 0
    fi
    if [[ ! -e "$dir/$MARKER" ]]; then
        # Not (yet) ours: only an empty folder is removed, never anything else.
        rmdir "$dir" 2>/dev/null || log "stop: $dir is not a test-servers folder; left alone"
        return 0
    fi
    set +e
    local bindir
    bindir="$(pg_bindir)"
    # PostgreSQL: immediate shutdown (throwaway data; takes well under a second).
    if [[ -f "$dir/postgres/data/postmaster.pid" && -n "$bindir" ]]; then
        local pg_user
        read -r _ pg_user <<<"$(server_users)"
        pg_ctl_as "$dir" "$pg_user" -m immediate -w -t 10 stop >/dev/null 2>&1
    fi
    # RabbitMQ, epmd and any PostgreSQL leftovers: SIGKILL. The data is thrown away, and a clean
    # RabbitMQ shutdown (SIGTERM) takes about 8 s here for nothing.
    kill_ours "$dir" 0
    rm -rf "$dir"
    set -e
    return 0
}

# --- crash and restart (a fault the chaos tests inject) ----------------------------------------------

# crash_restart SERVER DIR: the server dies as in a crash (no clean shutdown, connections cut), then
# starts again on the same ports with the same data; returns once it serves again.
cmd_crash_restart() {
    local server=${1:-} dir=${2:-${CLUSTER_TEST_SERVERS_DIR:-}}
    [[ -n "$dir" && -e "$dir/$MARKER" ]] || die "crash-restart: $dir is not a test-servers folder"
    local rmq_user pg_user
    read -r rmq_user pg_user <<<"$(server_users)"
    case "$server" in
        rabbitmq)
            local rdir="$dir/rabbitmq" sid amqp_port mgmt_port pids deadline
            read -r sid <"$dir/rabbitmq.sid"
            amqp_port="$(sed -n 's/^export RABBITMQ_NODE_PORT=//p' "$rdir/node.env")"
            mgmt_port="$(sed -n 's/^management.tcp.port = //p' "$rdir/rabbitmq.conf")"
            # Every process of the node's session (the VM and its port programs), never epmd's.
            pids="$(ps -o pid= -s "$sid" 2>/dev/null | tr -s ' \n' ' ')"
            # shellcheck disable=SC2086
            [[ -n "${pids// /}" ]] && kill -KILL $pids 2>/dev/null
            deadline=$(($(now_ms) + 20000))
            while port_in_use "$amqp_port" || [[ -n "$(ps -o pid= -s "$sid" 2>/dev/null)" ]]; do
                (($(now_ms) < deadline)) || die "RabbitMQ (session $sid) did not die"
                sleep 0.1
            done
            start_rabbitmq_node "$dir" "$rmq_user"
            wait_for "RabbitMQ (restarted)" "$RABBITMQ_BOOT_DEADLINE_S" "$dir/rabbitmq.sid" \
                rabbitmq_alive "$mgmt_port" "$amqp_port"
            ;;
        postgres)
            local pdir="$dir/postgres" pg_port
            pg_port="$(sed -n 's/^port = //p' "$pdir/data/postgresql.conf" | tail -n 1)"
            pg_ctl_as "$dir" "$pg_user" -m immediate -w -t 30 stop </dev/null >>"$pdir/pg_ctl.log" 2>&1 ||
                die "PostgreSQL did not stop"
            pg_ctl_as "$dir" "$pg_user" -l "$pdir/postgres.log" -w -t 60 start </dev/null >>"$pdir/pg_ctl.log" 2>&1 ||
                die "PostgreSQL did not start again"
            "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres -t 30 ||
                die "PostgreSQL is not reachable on 127.0.0.1:$pg_port after its restart"
            ;;
        *) die "crash-restart: say rabbitmq or postgres" ;;
    esac
    log "$server crashed and restarted"
}

# --- main ------------------------------------------------------------------------------------------

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    crash-restart) shift; cmd_crash_restart "$@" ;;
    *)
        echo "usage: $0 start [DIR] | stop [DIR] | crash-restart rabbitmq|postgres [DIR]   (or: source $0; cluster_test_servers_start)" >&2
        exit 2
        ;;
esac
