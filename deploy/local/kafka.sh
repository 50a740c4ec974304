#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft) broker for development and tests, or a 3-node
# cluster on one machine, assembled from Maven Central jars and run with plain `java`: no
# Docker, no tarball.
#
#   deploy/local/kafka.sh fetch    resolve the broker's jars into the cache (once)
#   deploy/local/kafka.sh up       fetch, format storage (once), start, wait until it answers;
#                                  prints `KAFKA_BOOTSTRAP=127.0.0.1:<port>` on stdout
#   deploy/local/kafka.sh down     stop the broker of this state dir
#   deploy/local/kafka.sh wipe     down + delete the state dir (keeps the jar cache)
#   deploy/local/kafka.sh status   does the broker answer?
#
#   deploy/local/kafka.sh cluster-up      the same for a cluster of KRaft nodes, each broker and
#                                         controller (all voters), internal topics at RF 3 /
#                                         min ISR 2; starts the nodes not running (so it also
#                                         restarts one that died), waits until every node is
#                                         a live broker; prints KAFKA_BOOTSTRAP=<3 addresses>
#   deploy/local/kafka.sh cluster-down | cluster-wipe | cluster-status
#
# Environment (see README.md):
#   KAFKA_VERSION          default 4.1.1 (3.9.x also works: log4j 1 via the kafka-3 profile)
#   KAFKA_CACHE            jar cache, default <repo>/.cache/kafka  (lib-<version>/ inside)
#   KAFKA_STATE            data, config, logs, pid; default <repo>/.cache/kafka/state, for the
#                          cluster <repo>/.cache/kafka/cluster (node-<id>/ inside)
#   KAFKA_PORT             client port, default 19092
#   KAFKA_CONTROLLER_PORT  controller port, default 19093
#   KAFKA_CLUSTER_PORTS    the cluster's client ports, one per node, default 19192,19193,19194
#   KAFKA_CLUSTER_CONTROLLER_PORTS  its controller ports, default 19195,19196,19197
#   KAFKA_READY_TIMEOUT    seconds to wait for the broker to answer, default 60
#   KAFKA_HEAP_OPTS        default -Xms256m -Xmx512m
#   KAFKA_JVM_OPTS         extra JVM options for the broker
#   JAVA, MVN              the java and mvn commands, default `java` and `mvn`
#   KAFKA_MVN_ARGS         extra arguments for mvn (e.g. -o, -Dmaven.repo.local=...)
#
# Only stdout line ever printed: KAFKA_BOOTSTRAP=... (by `up`). Everything else goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_CACHE="${KAFKA_CACHE:-$REPO/.cache/kafka}"
case "${1:-}" in
cluster-*) KAFKA_STATE="${KAFKA_STATE:-$REPO/.cache/kafka/cluster}" ;;
*) KAFKA_STATE="${KAFKA_STATE:-$REPO/.cache/kafka/state}" ;;
esac
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_CLUSTER_PORTS="${KAFKA_CLUSTER_PORTS:-19192,19193,19194}"
KAFKA_CLUSTER_CONTROLLER_PORTS="${KAFKA_CLUSTER_CONTROLLER_PORTS:-19195,19196,19197}"
KAFKA_READY_TIMEOUT="${KAFKA_READY_TIMEOUT:-60}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_MVN_ARGS="${KAFKA_MVN_ARGS:-}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

LIB="$KAFKA_CACHE/lib-$KAFKA_VERSION"
STAMP="$LIB/.complete"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
CLUSTER_ID_FILE="$KAFKA_STATE/cluster.id"

# The node the functions below act on: the single broker, or one cluster node (select_node).
NODE_ID=1
NODE_STATE="$KAFKA_STATE"
QUORUM_VOTERS="1@127.0.0.1:$KAFKA_CONTROLLER_PORT"
REPLICAS=1
MIN_ISR=1
node_paths() {
    CONF="$NODE_STATE/server.properties"
    DATA="$NODE_STATE/data"
    LOGS="$NODE_STATE/logs"
    PIDFILE="$NODE_STATE/kafka.pid"
}
node_paths

log() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

major_version() { echo "${KAFKA_VERSION%%.*}"; }

# Log config and the matching system property differ between Kafka 4.x (log4j2) and 3.x (log4j 1).
log_opts() {
    if [ "$(major_version)" -ge 4 ]; then
        echo "-Dlog4j2.configurationFile=$HERE/log4j2.properties"
    else
        echo "-Dlog4j.configuration=file:$HERE/log4j.properties"
    fi
}

# Quiet config for the short-lived tools (StorageTool, KafkaReady): errors only, on stderr.
tool_log_opts() {
    if [ "$(major_version)" -ge 4 ]; then
        echo "-Dlog4j2.level=ERROR"
    else
        echo "-Dlog4j.configuration=file:$HERE/log4j.properties -Dkafka.logs.dir=$LOGS"
    fi
}

# Prints what is missing (java >= 17 always; mvn too when $1 = with-mvn), exits 1 if anything is.
check_tools() {
    local missing=() v major
    if ! command -v "$JAVA" >/dev/null 2>&1; then
        missing+=("java: '$JAVA' not found; install a Java 17+ JDK (e.g. apt-get install openjdk-17-jdk-headless) or set JAVA=/path/to/java")
    else
        v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -1)"
        major="${v%%.*}"
        [ "$major" = "1" ] && major="$(echo "$v" | cut -d. -f2)"
        if ! [[ "$major" =~ ^[0-9]+$ ]]; then
            missing+=("java: cannot read the version from '$JAVA -version'")
        elif [ "$major" -lt 17 ]; then
            missing+=("java: '$JAVA' is Java $v; Kafka needs a Java 17+ JDK (the readiness probe uses the source launcher)")
        fi
    fi
    if [ "${1:-}" = with-mvn ] && ! command -v "$MVN" >/dev/null 2>&1; then
        missing+=("mvn: '$MVN' not found; install Maven 3.6+ (e.g. apt-get install maven) or set MVN=/path/to/mvn (it fetches the broker's jars from Maven Central, once)")
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        printf 'kafka.sh: error: missing %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

cmd_fetch() {
    if [ -f "$STAMP" ]; then
        check_tools
        return 0
    fi
    check_tools with-mvn
    log "resolving Kafka $KAFKA_VERSION jars from Maven Central into $LIB"
    mkdir -p "$KAFKA_CACHE"
    local tmp profile=""
    tmp="$(mktemp -d "$KAFKA_CACHE/.lib-$KAFKA_VERSION.XXXXXX")"
    [ "$(major_version)" -lt 4 ] && profile="-Pkafka-3"
    # shellcheck disable=SC2086
    if ! "$MVN" -q -B -f "$HERE/pom.xml" $profile $KAFKA_MVN_ARGS \
        -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 |
        sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2; then # Debian's mvn -q prints bare ANSI resets
        rm -rf "$tmp"
        die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (see above)"
    fi
    ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"; }
    touch "$tmp/.complete"
    # Atomic publish; another fetch may have won the race, then keep its copy.
    if ! mv -T "$tmp" "$LIB" 2>/dev/null; then
        rm -rf "$tmp"
        [ -f "$STAMP" ] || die "could not publish $LIB (a partial directory is in the way? remove it)"
    fi
    log "$(find "$LIB" -name '*.jar' | wc -l) jars in $LIB"
}

# TCP probe only (no JVM): is anything listening on 127.0.0.1:$1?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Real metadata call through AdminClient. $1 timeout seconds, $2 optional broker pid(s),
# comma-separated; $3 how many live brokers make it ready (default 1), $4 bootstrap.
probe() {
    # shellcheck disable=SC2046
    "$JAVA" $(tool_log_opts) -cp "$LIB/*" "$HERE/KafkaReady.java" "${4:-$BOOTSTRAP}" "$1" \
        "${2:--}" "${3:-1}"
}

# Pid of the broker started from this state dir, if it runs: the pid file, else any process
# whose command line runs kafka.Kafka on exactly this state dir's config.
is_our_broker() {
    local -a argv=()
    [ -r "/proc/$1/cmdline" ] || return 1
    mapfile -d '' -t argv <"/proc/$1/cmdline" 2>/dev/null || return 1
    local n=${#argv[@]}
    [ "$n" -ge 2 ] && [ "${argv[n - 2]}" = "kafka.Kafka" ] && [ "${argv[n - 1]}" = "$CONF" ]
}

broker_pid() {
    local pid p
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [ -n "$pid" ] && is_our_broker "$pid"; then
        echo "$pid"
        return 0
    fi
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        if is_our_broker "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

render_config() {
    mkdir -p "$NODE_STATE" "$DATA" "$LOGS"
    local tmp="$CONF.tmp.$$"
    sed -e "s|\${KAFKA_NODE_ID}|$NODE_ID|g" \
        -e "s|\${KAFKA_QUORUM_VOTERS}|$QUORUM_VOTERS|g" \
        -e "s|\${KAFKA_PORT}|$KAFKA_PORT|g" \
        -e "s|\${KAFKA_CONTROLLER_PORT}|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|\${KAFKA_DATA_DIR}|$DATA|g" \
        -e "s|\${KAFKA_REPLICAS}|$REPLICAS|g" \
        -e "s|\${KAFKA_MIN_ISR}|$MIN_ISR|g" \
        "$HERE/server.properties.template" >"$tmp"
    if [ "$(major_version)" -lt 4 ]; then
        # Share groups do not exist in 3.x; drop their settings to avoid "unknown config" noise.
        sed -i '/^share\.coordinator\./d' "$tmp"
    fi
    mv -f "$tmp" "$CONF"
}

# A cluster id is what `kafka-storage.sh random-uuid` prints: 16 random bytes in unpadded
# base64url (Kafka's Uuid.toString), not starting with '-' (it would read as an option). Made
# here rather than by StorageTool: one JVM less, which costs seconds on a busy 2-core box.
ensure_cluster_id() {
    if [ ! -s "$CLUSTER_ID_FILE" ]; then
        mkdir -p "$KAFKA_STATE"
        local id="-"
        while [ "${id:0:1}" = "-" ]; do
            id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        done
        echo "$id" >"$CLUSTER_ID_FILE.tmp"
        mv -f "$CLUSTER_ID_FILE.tmp" "$CLUSTER_ID_FILE"
    fi
}

format_storage() {
    if [ -f "$DATA/meta.properties" ]; then
        return 0 # formatted before: a restart keeps its data and cluster id
    fi
    ensure_cluster_id
    local id
    id="$(tr -d '[:space:]' <"$CLUSTER_ID_FILE")"
    log "formatting $DATA (cluster id $id)"
    # Static quorum (controller.quorum.voters): format without --standalone.
    # shellcheck disable=SC2046
    "$JAVA" $(tool_log_opts) -cp "$LIB/*" kafka.tools.StorageTool \
        format -t "$id" -c "$CONF" --ignore-formatted >&2
}

print_log_tail() {
    local f
    for f in "$LOGS/kafka.out" "$LOGS/server.log"; do
        if [ -s "$f" ]; then
            echo "----- last lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

# Starts the selected node's JVM and writes its pid file.
start_node() {
    : >"$LOGS/kafka.out"
    # New session (setsid): the broker outlives this script and its terminal; no fd of
    # ours stays open in it, so callers capturing our stdout are not held up. This script
    # has no job control, so setsid execs in place and $! is the broker's pid.
    # shellcheck disable=SC2046,SC2086
    setsid "$JAVA" $KAFKA_HEAP_OPTS \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dkafka.logs.dir="$LOGS" $(log_opts) $KAFKA_JVM_OPTS \
        -cp "$LIB/*" kafka.Kafka "$CONF" \
        </dev/null >>"$LOGS/kafka.out" 2>&1 9>&- &
    echo "$!" >"$PIDFILE"
}

cmd_up() {
    cmd_fetch
    local pid=""
    pid="$(broker_pid || true)"

    if [ -z "$pid" ] && port_open "$KAFKA_PORT"; then
        if probe 5 >/dev/null; then
            log "a Kafka broker already answers on $BOOTSTRAP (not started from $KAFKA_STATE); using it"
            echo "KAFKA_BOOTSTRAP=$BOOTSTRAP"
            return 0
        fi
        die "port $KAFKA_PORT is in use by something that is not a Kafka broker; set KAFKA_PORT"
    fi

    if [ -n "$pid" ]; then
        log "broker from $KAFKA_STATE already running (pid $pid)"
    else
        if port_open "$KAFKA_CONTROLLER_PORT"; then
            die "controller port $KAFKA_CONTROLLER_PORT is in use; set KAFKA_CONTROLLER_PORT"
        fi
        render_config
        format_storage
        log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (state $KAFKA_STATE)"
        start_node
        pid="$(cat "$PIDFILE")"
    fi

    local rc=0
    probe "$KAFKA_READY_TIMEOUT" "$pid" >/dev/null || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "KAFKA_BOOTSTRAP=$BOOTSTRAP"
        return 0
    fi
    if [ "$rc" -eq 2 ]; then
        rm -f "$PIDFILE"
        log "the broker exited during startup"
    else
        log "the broker (pid $pid) did not answer within ${KAFKA_READY_TIMEOUT}s; it is left running (kafka.sh down stops it)"
    fi
    print_log_tail
    exit 1
}

cmd_down() {
    local pid
    if ! pid="$(broker_pid)"; then
        rm -f "$PIDFILE"
        log "no broker running from $KAFKA_STATE"
        return 0
    fi
    log "stopping broker pid $pid"
    stop_pids "$pid"
    rm -f "$PIDFILE"
    log "stopped"
}

# Which of the pids given still run (printed, space-separated).
alive_pids() {
    local pid alive=()
    for pid in "$@"; do
        kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    echo "${alive[*]}"
}

# SIGTERM to every pid given at once, up to 20 s, then SIGKILL to those still alive.
stop_pids() {
    local i alive
    kill -TERM "$@" 2>/dev/null || true
    for i in $(seq 1 100); do # 20 s
        alive="$(alive_pids "$@")"
        [ -z "$alive" ] && return 0
        sleep 0.2
    done
    log "still alive after 20 s: SIGKILL $alive"
    # shellcheck disable=SC2086
    kill -KILL $alive 2>/dev/null || true
    for i in $(seq 1 25); do
        # shellcheck disable=SC2086
        [ -z "$(alive_pids $alive)" ] && return 0
        sleep 0.2
    done
}

cmd_wipe() {
    cmd_down
    if [ -d "$KAFKA_STATE" ]; then
        rm -rf "$KAFKA_STATE"
        log "removed $KAFKA_STATE"
    fi
}

cmd_status() {
    local pid=""
    pid="$(broker_pid || true)"
    if ! port_open "$KAFKA_PORT"; then
        if [ -n "$pid" ]; then
            log "broker from $KAFKA_STATE is running (pid $pid) but $BOOTSTRAP is not open yet"
        else
            log "nothing listens on $BOOTSTRAP"
        fi
        return 1
    fi
    [ -f "$STAMP" ] || die "jars for Kafka $KAFKA_VERSION not fetched yet (kafka.sh fetch)"
    if probe 5 >/dev/null; then
        log "up: $BOOTSTRAP answers${pid:+ (pid $pid, state $KAFKA_STATE)}"
        return 0
    fi
    log "$BOOTSTRAP is open but does not answer as a Kafka broker"
    return 1
}

# --- cluster: KAFKA_CLUSTER_PORTS / KAFKA_CLUSTER_CONTROLLER_PORTS, one node per port -------
CLUSTER_PORTS=()
CLUSTER_CONTROLLER_PORTS=()
CLUSTER_BOOTSTRAP=""

# Reads the cluster's ports; every node is a voter, so QUORUM_VOTERS names them all.
cluster_config() {
    IFS=, read -r -a CLUSTER_PORTS <<<"$KAFKA_CLUSTER_PORTS"
    IFS=, read -r -a CLUSTER_CONTROLLER_PORTS <<<"$KAFKA_CLUSTER_CONTROLLER_PORTS"
    local n=${#CLUSTER_PORTS[@]} i voters=() addresses=()
    [ "$n" -ge 3 ] || die "a cluster needs 3 nodes or more (KAFKA_CLUSTER_PORTS has $n)"
    [ "${#CLUSTER_CONTROLLER_PORTS[@]}" -eq "$n" ] ||
        die "KAFKA_CLUSTER_CONTROLLER_PORTS needs one port per node ($n)"
    for ((i = 1; i <= n; i++)); do
        voters+=("$i@127.0.0.1:${CLUSTER_CONTROLLER_PORTS[i - 1]}")
        addresses+=("127.0.0.1:${CLUSTER_PORTS[i - 1]}")
    done
    QUORUM_VOTERS="$(IFS=,; echo "${voters[*]}")"
    CLUSTER_BOOTSTRAP="$(IFS=,; echo "${addresses[*]}")"
    # What production asks of the data (schemas/topics.yaml, `production`): one broker may die.
    REPLICAS=3
    MIN_ISR=2
}

# Points the node functions (render_config, start_node, broker_pid, print_log_tail) at node $1.
select_node() {
    NODE_ID=$1
    NODE_STATE="$KAFKA_STATE/node-$1"
    KAFKA_PORT="${CLUSTER_PORTS[$1 - 1]}"
    KAFKA_CONTROLLER_PORT="${CLUSTER_CONTROLLER_PORTS[$1 - 1]}"
    BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
    node_paths
}

cmd_cluster_up() {
    cmd_fetch
    cluster_config
    local n=${#CLUSTER_PORTS[@]} i pid pids=() started=() unformatted=()
    for ((i = 1; i <= n; i++)); do
        select_node "$i"
        pid="$(broker_pid || true)"
        if [ -z "$pid" ]; then
            if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
                die "node $i: port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT is in use; set KAFKA_CLUSTER_PORTS / KAFKA_CLUSTER_CONTROLLER_PORTS"
            fi
            render_config
            started+=("$i")
        fi
        pids[i]="$pid"
    done
    if [ "${#started[@]}" -gt 0 ]; then
        ensure_cluster_id
        for i in "${started[@]}"; do
            select_node "$i"
            # Formatted before: a restart keeps its data and cluster id.
            [ -f "$DATA/meta.properties" ] || unformatted+=("$CONF")
        done
        if [ "${#unformatted[@]}" -gt 0 ]; then
            log "formatting ${#unformatted[@]} node(s) (cluster id $(tr -d '[:space:]' <"$CLUSTER_ID_FILE"))"
            # shellcheck disable=SC2046
            "$JAVA" $(tool_log_opts) -cp "$LIB/*" "$HERE/FormatStorage.java" \
                "$(tr -d '[:space:]' <"$CLUSTER_ID_FILE")" "${unformatted[@]}" >&2 ||
                die "formatting the nodes' storage failed (see above)"
        fi
        for i in "${started[@]}"; do
            select_node "$i"
            start_node
            pids[i]="$(cat "$PIDFILE")"
        done
        log "started node(s) ${started[*]} of $n on $CLUSTER_BOOTSTRAP (state $KAFKA_STATE)"
    else
        log "all $n nodes from $KAFKA_STATE already running"
    fi

    # Ready when the metadata names every node as a live (registered, unfenced) broker. A node
    # that died less than broker.session.timeout.ms (9 s) ago may still be named: whoever needs
    # it back in sync checks the ISR (tests/integration/test_kafka_cluster.py does).
    local rc=0
    probe "$KAFKA_READY_TIMEOUT" "$(IFS=,; echo "${pids[*]}")" "$n" "$CLUSTER_BOOTSTRAP" \
        >/dev/null || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "KAFKA_BOOTSTRAP=$CLUSTER_BOOTSTRAP"
        return 0
    fi
    if [ "$rc" -eq 2 ]; then
        log "a node exited during startup"
    else
        log "the cluster did not have $n live brokers within ${KAFKA_READY_TIMEOUT}s; its nodes are left running (kafka.sh cluster-down stops them)"
    fi
    for ((i = 1; i <= n; i++)); do
        select_node "$i"
        print_log_tail
    done
    exit 1
}

cmd_cluster_down() {
    cluster_config
    local n=${#CLUSTER_PORTS[@]} i pid pids=()
    for ((i = 1; i <= n; i++)); do
        select_node "$i"
        if pid="$(broker_pid)"; then
            pids+=("$pid")
        fi
    done
    if [ "${#pids[@]}" -eq 0 ]; then
        log "no node running from $KAFKA_STATE"
    else
        # All at once: a node stopped alone moves its leaderships to the others first, and
        # the last ones would wait for a controller quorum that is already gone.
        log "stopping node pid(s) ${pids[*]}"
        stop_pids "${pids[@]}"
        log "stopped"
    fi
    for ((i = 1; i <= n; i++)); do
        select_node "$i"
        rm -f "$PIDFILE"
    done
}

cmd_cluster_wipe() {
    cmd_cluster_down
    if [ -d "$KAFKA_STATE" ]; then
        rm -rf "$KAFKA_STATE"
        log "removed $KAFKA_STATE"
    fi
}

cmd_cluster_status() {
    cluster_config
    [ -f "$STAMP" ] || die "jars for Kafka $KAFKA_VERSION not fetched yet (kafka.sh fetch)"
    local n=${#CLUSTER_PORTS[@]}
    if probe 5 - "$n" "$CLUSTER_BOOTSTRAP" >/dev/null; then
        log "up: $n live brokers on $CLUSTER_BOOTSTRAP (state $KAFKA_STATE)"
        return 0
    fi
    log "$CLUSTER_BOOTSTRAP does not answer with $n live brokers"
    return 1
}

# Serialise up/down/wipe on one state dir (two test workers calling `up` at once must not
# start two brokers). fd 9 is closed for the broker itself.
lock_state() {
    if command -v flock >/dev/null 2>&1; then
        mkdir -p "$KAFKA_STATE"
        exec 9>"$KAFKA_STATE/.kafka.sh.lock"
        flock 9
    fi
}

case "${1:-}" in
fetch) cmd_fetch ;;
up) lock_state && cmd_up ;;
down) lock_state && cmd_down ;;
wipe) lock_state && cmd_wipe ;;
status) cmd_status ;;
cluster-up) lock_state && cmd_cluster_up ;;
cluster-down) lock_state && cmd_cluster_down ;;
cluster-wipe) lock_state && cmd_cluster_wipe ;;
cluster-status) cmd_cluster_status ;;
*)
    echo "usage: $0 {fetch|up|down|wipe|status|cluster-up|cluster-down|cluster-wipe|cluster-status}   (see the header of this file)" >&2
    exit 64
    ;;
esac
