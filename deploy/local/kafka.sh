#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft) broker for development and tests, assembled from
# Maven Central jars and run with plain `java`: no Docker, no tarball.
#
#   deploy/local/kafka.sh fetch    resolve the broker's jars into the cache (once)
#   deploy/local/kafka.sh up       fetch, format storage (once), start, wait until it answers;
#                                  prints `KAFKA_BOOTSTRAP=127.0.0.1:<port>` on stdout
#   deploy/local/kafka.sh down     stop the broker of this state dir
#   deploy/local/kafka.sh wipe     down + delete the state dir (keeps the jar cache)
#   deploy/local/kafka.sh status   does the broker answer?
#
# Environment (see README.md):
#   KAFKA_VERSION          default 4.1.1 (3.9.x also works: log4j 1 via the kafka-3 profile)
#   KAFKA_CACHE            jar cache, default <repo>/.cache/kafka  (lib-<version>/ inside)
#   KAFKA_STATE            data, config, logs, pid; default <repo>/.cache/kafka/state
#   KAFKA_PORT             client port, default 19092
#   KAFKA_CONTROLLER_PORT  controller port, default 19093
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
KAFKA_STATE="${KAFKA_STATE:-$REPO/.cache/kafka/state}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_READY_TIMEOUT="${KAFKA_READY_TIMEOUT:-60}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_MVN_ARGS="${KAFKA_MVN_ARGS:-}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

LIB="$KAFKA_CACHE/lib-$KAFKA_VERSION"
STAMP="$LIB/.complete"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
CONF="$KAFKA_STATE/server.properties"
DATA="$KAFKA_STATE/data"
LOGS="$KAFKA_STATE/logs"
PIDFILE="$KAFKA_STATE/kafka.pid"
CLUSTER_ID_FILE="$KAFKA_STATE/cluster.id"

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

# Real metadata call through AdminClient. $1 timeout seconds, $2 optional broker pid.
probe() {
    # shellcheck disable=SC2046
    "$JAVA" $(tool_log_opts) -cp "$LIB/*" "$HERE/KafkaReady.java" "$BOOTSTRAP" "$1" ${2:+"$2"}
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
    mkdir -p "$KAFKA_STATE" "$DATA" "$LOGS"
    local tmp="$CONF.tmp.$$"
    sed -e "s|\${KAFKA_PORT}|$KAFKA_PORT|g" \
        -e "s|\${KAFKA_CONTROLLER_PORT}|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|\${KAFKA_DATA_DIR}|$DATA|g" \
        "$HERE/server.properties.template" >"$tmp"
    if [ "$(major_version)" -lt 4 ]; then
        # Share groups do not exist in 3.x; drop their settings to avoid "unknown config" noise.
        sed -i '/^share\.coordinator\./d' "$tmp"
    fi
    mv -f "$tmp" "$CONF"
}

format_storage() {
    if [ -f "$DATA/meta.properties" ]; then
        return 0 # formatted before: a restart keeps its data and cluster id
    fi
    if [ ! -s "$CLUSTER_ID_FILE" ]; then
        # shellcheck disable=SC2046
        "$JAVA" $(tool_log_opts) -cp "$LIB/*" kafka.tools.StorageTool random-uuid | tail -n 1 >"$CLUSTER_ID_FILE.tmp"
        mv -f "$CLUSTER_ID_FILE.tmp" "$CLUSTER_ID_FILE"
    fi
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
        pid=$!
        echo "$pid" >"$PIDFILE"
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
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do # 20 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still alive after 20 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 25); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
    rm -f "$PIDFILE"
    log "stopped"
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
*)
    echo "usage: $0 {fetch|up|down|wipe|status}   (see the header of this file)" >&2
    exit 64
    ;;
esac
