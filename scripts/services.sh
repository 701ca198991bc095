#!/usr/bin/env bash
# Start / stop throw-away PostgreSQL, Redis and Kafka (KRaft, single node) on 127.0.0.1.
#
#   scripts/services.sh start <statedir>   # then: source <statedir>/env
#   scripts/services.sh stop  <statedir>   # safe to call twice or after a partial start
#
# One service of a running set, on the ports and data chosen at `start` (kept in <statedir>/ports),
# for fault-injection tests:
#   scripts/services.sh stop-kafka|start-kafka <statedir>     # start-kafka waits for metadata answers
#   scripts/services.sh stop-postgres|start-postgres|restart-postgres <statedir>  # waits for pg_isready
#   scripts/services.sh stop-redis|start-redis <statedir>     # Redis keeps no data across a restart
#
# Everything (data, sockets, logs, pid files, the env file) lives in <statedir>.
# Needs scripts/provision.sh to have run (binaries in $CARACAL_TOOLS_DIR, Kafka jars).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TOOLS_DIR="${CARACAL_TOOLS_DIR:-$HOME/.cache/caracal-tools}"
KAFKA_LIBS="$TOOLS_DIR/kafka/libs"

PG_TIMEOUT=30
REDIS_TIMEOUT=15
KAFKA_TIMEOUT=90
STOP_TIMEOUT=30

log() { printf 'services: %s\n' "$*"; }
err() { printf 'services: error: %s\n' "$*" >&2; }
usage() { echo "usage: $0 start|stop|stop-kafka|start-kafka|stop-postgres|start-postgres|restart-postgres|stop-redis|start-redis <statedir>" >&2; exit 2; }

[ $# -eq 2 ] || usage
CMD="$1"
if [ "$CMD" = stop ] && [ ! -d "$2" ]; then exit 0; fi
mkdir -p "$2"
STATE="$(cd "$2" && pwd)"

PG_DIR="$STATE/pg"
PG_SOCK="$STATE/pgsock"
PG_LOG="$STATE/postgres.log"
REDIS_DIR="$STATE/redis"
REDIS_PID="$STATE/redis.pid"
REDIS_LOG="$STATE/redis.log"
KAFKA_DIR="$STATE/kafka"
KAFKA_PID="$STATE/kafka.pid"
KAFKA_LOG_DIR="$KAFKA_DIR/logs"   # broker's own log4j output (server.log)
KAFKA_OUT="$KAFKA_DIR/stdout.log" # JVM stdout/stderr
PORTS_FILE="$STATE/ports"           # ports chosen at start, reused by the single-service commands

pg_bin_dir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] && printf '%s\n' "$d"
}

# PostgreSQL refuses to run as root: run its tools as the `postgres` OS user when we are root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# True if pid is alive and its command line contains the given string (guards against pid reuse).
pid_matches() {
  pid_alive "$1" || return 1
  [ -r "/proc/$1/cmdline" ] || return 0
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline")" || return 1
  [[ "$cmdline" == *"$2"* ]]
}

read_pid() { [ -s "$1" ] && head -n 1 "$1" | tr -dc '0-9' || true; }

wait_gone() { # pid timeout_s
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    pid_alive "$1" || return 0
    sleep 0.1
  done
  return 1
}

show_log() { # file
  [ -f "$1" ] || return 0
  if [ "${CI:-}" = "true" ]; then
    echo "----- last 60 lines of $1 -----" >&2
    tail -n 60 "$1" >&2 || true
    echo "----- end of $1 -----" >&2
  else
    echo "  see $1" >&2
  fi
}

# ------------------------------------------------------------------------------------------------
stop_all() {
  local kpid rpid ppid rc=0
  kpid="$(read_pid "$KAFKA_PID")"
  rpid="$(read_pid "$REDIS_PID")"

  # Signal Kafka and Redis first (they shut down in parallel with PostgreSQL).
  if pid_matches "$kpid" "$KAFKA_DIR"; then kill -TERM "$kpid" 2>/dev/null || true; else kpid=""; fi
  if pid_matches "$rpid" "redis-server"; then kill -TERM "$rpid" 2>/dev/null || true; else rpid=""; fi

  if [ -f "$PG_DIR/postmaster.pid" ]; then
    ppid="$(read_pid "$PG_DIR/postmaster.pid")"
    if pid_alive "$ppid"; then
      local pgbin
      if pgbin="$(pg_bin_dir)" && as_pg "$pgbin/pg_ctl" stop -D "$PG_DIR" -m fast -w -t "$STOP_TIMEOUT" >/dev/null 2>&1; then
        :
      else
        kill -QUIT "$ppid" 2>/dev/null || true
      fi
      wait_gone "$ppid" "$STOP_TIMEOUT" || { kill -KILL "$ppid" 2>/dev/null || true; err "postgres ($ppid) killed"; rc=1; }
      log "postgres stopped"
    fi
  fi

  if [ -n "$rpid" ]; then
    wait_gone "$rpid" "$STOP_TIMEOUT" || { kill -KILL "$rpid" 2>/dev/null || true; err "redis ($rpid) killed"; rc=1; }
    log "redis stopped"
  fi
  rm -f "$REDIS_PID"

  if [ -n "$kpid" ]; then
    if ! wait_gone "$kpid" "$STOP_TIMEOUT"; then
      kill -KILL "$kpid" 2>/dev/null || true
      wait_gone "$kpid" 5 || true
      err "kafka ($kpid) did not stop within ${STOP_TIMEOUT}s and was killed"
    fi
    log "kafka stopped"
  fi
  rm -f "$KAFKA_PID"
  return $rc
}

# ------------------------------------------------------------------------------------------------
free_ports() { # n -> n distinct free loopback ports, one per line
  node -e '
    const net = require("net");
    const n = Number(process.argv[1]);
    const servers = [];
    let done = 0;
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      servers.push(s);
      s.listen(0, "127.0.0.1", () => {
        if (++done === n) {
          for (const t of servers) console.log(t.address().port);
          for (const t of servers) t.close();
        }
      });
    }' "$1"
}

start_postgres() { # port
  local port="$1" pgbin i
  pgbin="$(pg_bin_dir)" || { err "no /usr/lib/postgresql/*/bin/pg_ctl; run scripts/provision.sh"; return 1; }
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { err "OS user 'postgres' missing (installed by the postgresql package)"; return 1; }
    chmod a+x "$STATE"
    if ! runuser -u postgres -- test -x "$STATE"; then
      err "the postgres OS user cannot reach $STATE (a parent directory is not traversable); use a state dir under /tmp"
      return 1
    fi
  fi
  mkdir -p "$PG_DIR" "$PG_SOCK"
  : >"$PG_LOG"
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR" "$PG_SOCK" "$PG_LOG"
  chmod 700 "$PG_DIR"

  if [ ! -f "$PG_DIR/PG_VERSION" ]; then
    as_pg "$pgbin/initdb" -D "$PG_DIR" -U postgres -A trust -E UTF8 --locale=C --no-sync \
      >"$STATE/initdb.log" 2>&1 || { err "initdb failed"; show_log "$STATE/initdb.log"; return 1; }
  fi
  # Only loopback TCP and a socket inside the state dir; test-speed durability settings.
  cat >"$STATE/postgresql.caracal.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_SOCK'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 1GB
checkpoint_timeout = 30min
shared_buffers = 128MB
log_min_messages = warning
log_checkpoints = off
EOF
  # Loopback-only trust authentication.
  cat >"$STATE/pg_hba.caracal.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 trust
EOF
  cp "$STATE/postgresql.caracal.conf" "$PG_DIR/postgresql.auto.conf"
  cp "$STATE/pg_hba.caracal.conf" "$PG_DIR/pg_hba.conf"
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR/postgresql.auto.conf" "$PG_DIR/pg_hba.conf"

  as_pg "$pgbin/pg_ctl" start -D "$PG_DIR" -l "$PG_LOG" -w -t "$PG_TIMEOUT" >/dev/null 2>&1 \
    || { err "PostgreSQL did not start"; show_log "$PG_LOG"; return 1; }
  for ((i = 0; i < PG_TIMEOUT * 5; i++)); do
    "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2 && break
    sleep 0.2
  done
  "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2 \
    || { err "PostgreSQL not ready on 127.0.0.1:$port after ${PG_TIMEOUT}s"; show_log "$PG_LOG"; return 1; }
  "$pgbin/psql" -q -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c 'CREATE DATABASE caracal' >/dev/null 2>"$STATE/createdb.log" \
    || { err "CREATE DATABASE caracal failed"; show_log "$STATE/createdb.log"; return 1; }
  log "postgres $("$pgbin/postgres" --version | awk '{print $3}') ready on 127.0.0.1:$port"
}

start_redis() { # port
  local port="$1" i
  mkdir -p "$REDIS_DIR"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" \
    >/dev/null 2>&1 || { err "redis-server did not start"; show_log "$REDIS_LOG"; return 1; }
  for ((i = 0; i < REDIS_TIMEOUT * 10; i++)); do
    [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ] && break
    sleep 0.1
  done
  [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ] \
    || { err "Redis not answering PING on 127.0.0.1:$port after ${REDIS_TIMEOUT}s"; show_log "$REDIS_LOG"; return 1; }
  log "redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') ready on 127.0.0.1:$port"
}

kafka_java() { # args...
  java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" \
    -Dkafka.logs.dir="$KAFKA_LOG_DIR" -cp "$KAFKA_LIBS/*" "$@"
}

# Metadata round trip with kafkajs from the repo's node_modules (falls back to the broker's own
# BrokerApiVersionsCommand if node_modules is not installed).
kafka_metadata_ok() { # port
  if (cd "$REPO_ROOT" && node -e 'require.resolve("kafkajs")' >/dev/null 2>&1); then
    (cd "$REPO_ROOT" && KAFKAJS_NO_PARTITIONER_WARNING=1 timeout 20 node -e '
      const { Kafka, logLevel } = require("kafkajs");
      const kafka = new Kafka({ clientId: "caracal-services-check", brokers: [process.argv[1]],
        logLevel: logLevel.NOTHING, connectionTimeout: 3000, requestTimeout: 5000, retry: { retries: 0 } });
      const admin = kafka.admin();
      (async () => {
        await admin.connect();
        await admin.listTopics();
        const c = await admin.describeCluster();
        if (!c.brokers.length) throw new Error("no brokers");
        await admin.disconnect();
      })().then(() => process.exit(0), () => process.exit(1));' "127.0.0.1:$1") >/dev/null 2>&1
  else
    timeout 30 java -Xmx128m -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" \
      -Dkafka.logs.dir="$KAFKA_LOG_DIR" -cp "$KAFKA_LIBS/*" kafka.admin.BrokerApiVersionsCommand \
      --bootstrap-server "127.0.0.1:$1" >/dev/null 2>&1
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_kafka() { # port controller_port
  local port="$1" cport="$2" cluster_id
  [ -d "$KAFKA_LIBS" ] && ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 \
    || { err "Kafka jars missing in $KAFKA_LIBS; run scripts/provision.sh"; return 1; }
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_LOG_DIR"
  cat >"$KAFKA_DIR/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$KAFKA_LOG_DIR/server.log
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
EOF
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Single-node KRaft (combined broker + controller), loopback only, test settings.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
  cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$KAFKA_OUT" | tail -n 1)"
  [ -n "$cluster_id" ] || { err "kafka StorageTool random-uuid failed"; show_log "$KAFKA_OUT"; return 1; }
  kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
    >>"$KAFKA_OUT" 2>&1 || { err "kafka StorageTool format failed"; show_log "$KAFKA_OUT"; return 1; }

  launch_kafka "$port"
}

# Runs the broker on the config and data already in $KAFKA_DIR (formatted once, so the cluster id
# and the topics survive a stop/start) and waits until it answers metadata requests.
launch_kafka() { # port
  local port="$1" pid i deadline
  # setsid: the broker does not share the caller's process group (Ctrl-C goes to test.sh, whose
  # trap stops it cleanly via the pid file).
  rm -f "$KAFKA_PID"
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PID" \
    java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties" \
    -Dkafka.logs.dir="$KAFKA_LOG_DIR" -Dcaracal.state="$KAFKA_DIR" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$KAFKA_DIR/server.properties" </dev/null >>"$KAFKA_OUT" 2>&1 &
  for ((i = 0; i < 50; i++)); do [ -s "$KAFKA_PID" ] && break; sleep 0.1; done
  pid="$(read_pid "$KAFKA_PID")"
  [ -n "$pid" ] || { err "could not launch the Kafka JVM"; show_log "$KAFKA_OUT"; return 1; }

  deadline=$((SECONDS + KAFKA_TIMEOUT))
  for ((i = 0; i < KAFKA_TIMEOUT * 4; i++)); do
    if ! pid_alive "$pid"; then
      err "Kafka exited during startup"; show_log "$KAFKA_LOG_DIR/server.log"; show_log "$KAFKA_OUT"; return 1
    fi
    if port_open "$port" && kafka_metadata_ok "$port"; then
      log "kafka $(basename "$(readlink -f "$TOOLS_DIR/kafka")" | sed 's/^kafka-//') (KRaft) ready on 127.0.0.1:$port"
      return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.25
  done
  err "Kafka not answering metadata requests on 127.0.0.1:$port after ${KAFKA_TIMEOUT}s"
  show_log "$KAFKA_LOG_DIR/server.log"; show_log "$KAFKA_OUT"
  return 1
}

start_all() {
  local kpid rpid ports pg_port redis_port kafka_port ctrl_port t0=$SECONDS
  kpid="$(read_pid "$KAFKA_PID")"; rpid="$(read_pid "$REDIS_PID")"
  if pid_alive "$kpid" || pid_alive "$rpid" || [ -f "$PG_DIR/postmaster.pid" ]; then
    err "services already running in $STATE; run: $0 stop $STATE"
    return 1
  fi
  # A used state dir (an earlier run, or a failed start) holds a database and a formatted Kafka log: starting over
  # in it half-works. Say so instead (start-kafka / start-postgres / start-redis restart one service in place).
  if [ -d "$PG_DIR" ] || [ -d "$STATE/kafka" ]; then
    err "$STATE was used before; start in a new or empty directory (or remove it: rm -rf $STATE)"
    return 1
  fi
  rm -f "$STATE/env" "$PORTS_FILE"
  mapfile -t ports < <(free_ports 4)
  [ "${#ports[@]}" -eq 4 ] || { err "could not pick free ports"; return 1; }
  pg_port="${ports[0]}"; redis_port="${ports[1]}"; kafka_port="${ports[2]}"; ctrl_port="${ports[3]}"

  # Kafka takes longest: launch it first and bring up PostgreSQL and Redis while the JVM starts.
  local kafka_status="$STATE/.kafka-start.rc"
  rm -f "$kafka_status"
  ( rc=0; start_kafka "$kafka_port" "$ctrl_port" || rc=$?; echo "$rc" >"$kafka_status" ) &
  local kjob=$!
  local ok=1
  start_postgres "$pg_port" || ok=0
  [ "$ok" = 1 ] && { start_redis "$redis_port" || ok=0; }
  wait "$kjob" || true
  [ "$(cat "$kafka_status" 2>/dev/null)" = "0" ] || ok=0
  rm -f "$kafka_status"
  if [ "$ok" != 1 ]; then
    err "start failed; stopping what was started (logs stay in $STATE)"
    stop_all >&2 || true
    return 1
  fi

  cat >"$PORTS_FILE" <<EOF
PG_PORT=$pg_port
REDIS_PORT=$redis_port
KAFKA_PORT=$kafka_port
KAFKA_CONTROLLER_PORT=$ctrl_port
EOF
  cat >"$STATE/env" <<EOF
export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/caracal
export REDIS_URL=redis://127.0.0.1:$redis_port
export KAFKA_BROKERS=127.0.0.1:$kafka_port
export CARACAL_OPA_BIN=$TOOLS_DIR/bin/opa
export CARACAL_HELM_BIN=$TOOLS_DIR/bin/helm
EOF
  log "all services up in $((SECONDS - t0))s; source $STATE/env"
}

# ------------------------------------------------------------------------------------------------
# Single services of a running set (fault-injection tests): the same ports and the same data.

load_ports() {
  [ -s "$PORTS_FILE" ] || { err "no $PORTS_FILE: start the services with '$0 start $STATE' first"; return 1; }
  local key value
  while IFS='=' read -r key value; do
    case "$key" in
      PG_PORT) PG_PORT="$value" ;;
      REDIS_PORT) REDIS_PORT="$value" ;;
      KAFKA_PORT) KAFKA_PORT="$value" ;;
      KAFKA_CONTROLLER_PORT) KAFKA_CONTROLLER_PORT="$value" ;;
    esac
  done <"$PORTS_FILE"
  [ -n "${PG_PORT:-}" ] && [ -n "${REDIS_PORT:-}" ] && [ -n "${KAFKA_PORT:-}" ] && [ -n "${KAFKA_CONTROLLER_PORT:-}" ] \
    || { err "$PORTS_FILE is incomplete"; return 1; }
}

stop_kafka_only() {
  local kpid
  kpid="$(read_pid "$KAFKA_PID")"
  if ! pid_matches "$kpid" "$KAFKA_DIR"; then
    rm -f "$KAFKA_PID"
    log "kafka not running"
    return 0
  fi
  kill -TERM "$kpid" 2>/dev/null || true
  if ! wait_gone "$kpid" "$STOP_TIMEOUT"; then
    kill -KILL "$kpid" 2>/dev/null || true
    wait_gone "$kpid" 5 || true
    err "kafka ($kpid) did not stop within ${STOP_TIMEOUT}s and was killed"
  fi
  rm -f "$KAFKA_PID"
  log "kafka stopped"
}

start_kafka_only() {
  load_ports
  local kpid i
  kpid="$(read_pid "$KAFKA_PID")"
  if pid_matches "$kpid" "$KAFKA_DIR"; then err "kafka already running (pid $kpid)"; return 1; fi
  # Not formatted again: a new cluster id would refuse the existing data (and lose the topics).
  [ -f "$KAFKA_DIR/server.properties" ] && [ -f "$KAFKA_DIR/data/meta.properties" ] \
    || { err "no formatted Kafka in $KAFKA_DIR: start the services with '$0 start $STATE' first"; return 1; }
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do port_open "$KAFKA_PORT" || break; sleep 0.1; done
  ! port_open "$KAFKA_PORT" || { err "127.0.0.1:$KAFKA_PORT is still taken"; return 1; }
  launch_kafka "$KAFKA_PORT"
}

stop_postgres_only() {
  local ppid pgbin
  [ -f "$PG_DIR/postmaster.pid" ] || { log "postgres not running"; return 0; }
  ppid="$(read_pid "$PG_DIR/postmaster.pid")"
  pid_alive "$ppid" || { log "postgres not running"; return 0; }
  pgbin="$(pg_bin_dir)" || { err "no /usr/lib/postgresql/*/bin/pg_ctl"; return 1; }
  as_pg "$pgbin/pg_ctl" stop -D "$PG_DIR" -m fast -w -t "$STOP_TIMEOUT" >/dev/null 2>&1 || kill -QUIT "$ppid" 2>/dev/null || true
  wait_gone "$ppid" "$STOP_TIMEOUT" || { kill -KILL "$ppid" 2>/dev/null || true; err "postgres ($ppid) killed"; return 1; }
  log "postgres stopped"
}

start_postgres_only() {
  load_ports
  local pgbin i
  pgbin="$(pg_bin_dir)" || { err "no /usr/lib/postgresql/*/bin/pg_ctl; run scripts/provision.sh"; return 1; }
  [ -f "$PG_DIR/PG_VERSION" ] || { err "no PostgreSQL data in $PG_DIR: start the services with '$0 start $STATE' first"; return 1; }
  if [ -f "$PG_DIR/postmaster.pid" ] && pid_alive "$(read_pid "$PG_DIR/postmaster.pid")"; then
    err "postgres already running"; return 1
  fi
  # Port and socket dir come from postgresql.auto.conf, written at start; the log is appended to.
  as_pg "$pgbin/pg_ctl" start -D "$PG_DIR" -l "$PG_LOG" -w -t "$PG_TIMEOUT" >/dev/null 2>&1 \
    || { err "PostgreSQL did not start"; show_log "$PG_LOG"; return 1; }
  for ((i = 0; i < PG_TIMEOUT * 5; i++)); do
    "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 && break
    sleep 0.2
  done
  "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 \
    || { err "PostgreSQL not ready on 127.0.0.1:$PG_PORT after ${PG_TIMEOUT}s"; show_log "$PG_LOG"; return 1; }
  log "postgres ready on 127.0.0.1:$PG_PORT"
}

stop_redis_only() {
  local rpid
  rpid="$(read_pid "$REDIS_PID")"
  if ! pid_matches "$rpid" "redis-server"; then rm -f "$REDIS_PID"; log "redis not running"; return 0; fi
  kill -TERM "$rpid" 2>/dev/null || true
  wait_gone "$rpid" "$STOP_TIMEOUT" || { kill -KILL "$rpid" 2>/dev/null || true; err "redis ($rpid) killed"; }
  rm -f "$REDIS_PID"
  log "redis stopped"
}

start_redis_only() {
  load_ports
  local rpid
  rpid="$(read_pid "$REDIS_PID")"
  if pid_matches "$rpid" "redis-server"; then err "redis already running (pid $rpid)"; return 1; fi
  start_redis "$REDIS_PORT"
}

case "$CMD" in
  start) start_all ;;
  stop) stop_all ;;
  stop-kafka) stop_kafka_only ;;
  start-kafka) start_kafka_only ;;
  stop-postgres) stop_postgres_only ;;
  start-postgres) start_postgres_only ;;
  restart-postgres) stop_postgres_only && start_postgres_only ;;
  stop-redis) stop_redis_only ;;
  start-redis) start_redis_only ;;
  *) usage ;;
esac
