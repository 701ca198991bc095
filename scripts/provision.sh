#!/usr/bin/env bash
# Provision the real services and tools that Caracal's integration/e2e tests and local runs use.
# Idempotent, pinned and cached: a second run only checks versions and takes a few seconds.
#
#   PostgreSQL + Redis   Debian packages (apt-get, only when the binaries are missing)
#   opa, helm            go install into $CARACAL_TOOLS_DIR/bin (default ~/.cache/caracal-tools/bin)
#   Kafka broker jars    Maven Central via mvn (cached in ~/.m2 and $CARACAL_TOOLS_DIR/kafka-<v>/libs)
#
# Prints one line per tool. See scripts/README.md.
set -euo pipefail

TOOLS_DIR="${CARACAL_TOOLS_DIR:-$HOME/.cache/caracal-tools}"
BIN_DIR="$TOOLS_DIR/bin"

OPA_VERSION="1.22.2"
OPA_MODULE="github.com/open-policy-agent/opa"
# First entry is the pinned version; the others are fallbacks if it does not resolve.
HELM_VERSIONS=("v3.21.4" "v3.20.2")
HELM_MODULE="helm.sh/helm/v3"
# kafkajs 2.2.4 speaks old protocol versions (JoinGroup v0/v1 ...): Kafka 3.9.x accepts them,
# 4.0.0 removed some. 3.9.0 is tried once only if 3.9.1 does not resolve.
KAFKA_VERSIONS=("3.9.1" "3.9.0")
# Logging binding shipped with the Kafka 3.9 distribution (log4j 1.x API via reload4j).
RELOAD4J_VERSION="1.2.25"
SLF4J_VERSION="1.7.36"
MVN_DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

log() { printf '%s\n' "$*"; }
die() { printf 'provision: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN_DIR"

# One provisioning at a time per tools dir (parallel `npm test` runs share the cache).
exec 9>"$TOOLS_DIR/.provision.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || die "timed out waiting for the lock $TOOLS_DIR/.provision.lock"
fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages by hand: $*"
  local out="$TOOLS_DIR/apt-install.log"
  if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$out" 2>&1; then
    return 0
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    APT_UPDATED=1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$out" 2>&1 || { tail -n 20 "$out" >&2; die "apt-get update failed (log: $out)"; }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$out" 2>&1 && return 0
  fi
  tail -n 20 "$out" >&2
  die "apt-get install $* failed (log: $out)"
}

pg_bin_dir() {
  # Highest installed major version.
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && printf '%s\n' "$d"
}

# --- base toolchains (expected on the machine; JDK/Maven installed from apt if missing) ----------
command -v node >/dev/null 2>&1 || die "node (>= 20) is required"
command -v go >/dev/null 2>&1 || die "go is required (to build opa and helm with go install)"
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  apt_install openjdk-17-jre-headless maven
  log "jdk+maven: installed from apt"
fi

# --- PostgreSQL ---------------------------------------------------------------------------------
if PG_BIN="$(pg_bin_dir)" && command -v psql >/dev/null 2>&1; then
  state="already present"
else
  apt_install postgresql
  PG_BIN="$(pg_bin_dir)" || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
  state="installed"
fi
log "postgresql: $("$PG_BIN/postgres" --version | awk '{print $3}') ($PG_BIN) $state"

# --- Redis --------------------------------------------------------------------------------------
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  state="already present"
else
  apt_install redis-server
  state="installed"
fi
redis_v="$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
log "redis: ${redis_v:-unknown} ($(command -v redis-server)) $state"

# --- Go tools -----------------------------------------------------------------------------------
go_mod_version() { # binary module -> version recorded in the binary's build info
  go version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m && !found { print $3; found = 1 }'
}

GO_LOG="$TOOLS_DIR/go-install.log"
: >"$GO_LOG"

opa_bin="$BIN_DIR/opa"
# The output is captured before it is matched: `opa version | grep -q` under pipefail fails at random when grep exits
# on the first match and opa then dies of SIGPIPE.
opa_reports_pinned() { local v; v="$("$opa_bin" version 2>/dev/null)" || return 1; grep -qx "Version: $OPA_VERSION" <<<"$v"; }
if [ -x "$opa_bin" ] && opa_reports_pinned; then
  state="already present"
else
  GOBIN="$BIN_DIR" go install "$OPA_MODULE@v$OPA_VERSION" >>"$GO_LOG" 2>&1 \
    || { tail -n 20 "$GO_LOG" >&2; die "go install $OPA_MODULE@v$OPA_VERSION failed (log: $GO_LOG)"; }
  opa_reports_pinned || die "$opa_bin does not report version $OPA_VERSION"
  state="installed"
fi
log "opa: $OPA_VERSION ($opa_bin) $state"

helm_bin="$BIN_DIR/helm"
helm_have=""
[ -x "$helm_bin" ] && helm_have="$(go_mod_version "$helm_bin" "$HELM_MODULE")"
helm_ok=""
for v in "${HELM_VERSIONS[@]}"; do [ "$helm_have" = "$v" ] && helm_ok="$v" && break; done
if [ -n "$helm_ok" ]; then
  state="already present"
  [ "$helm_ok" != "${HELM_VERSIONS[0]}" ] && state="already present (fallback; ${HELM_VERSIONS[0]} did not resolve earlier)"
else
  for v in "${HELM_VERSIONS[@]}"; do
    # -X stamps the version so `helm version` reports it (go install has no release ldflags).
    if GOBIN="$BIN_DIR" go install -ldflags "-s -w -X $HELM_MODULE/internal/version.version=$v" \
      "$HELM_MODULE/cmd/helm@$v" >>"$GO_LOG" 2>&1; then
      helm_ok="$v"
      break
    fi
    log "helm: $v did not install, trying the next pinned version (log: $GO_LOG)" >&2
  done
  [ -n "$helm_ok" ] || { tail -n 20 "$GO_LOG" >&2; die "go install helm failed for ${HELM_VERSIONS[*]} (log: $GO_LOG)"; }
  state="installed"
fi
log "helm: $helm_ok ($helm_bin) $state"

# --- Kafka broker jars --------------------------------------------------------------------------
kafka_pom() { # version
  cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/provision.sh: resolves the Kafka broker and its runtime classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.caracal</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>$1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$1</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>$RELOAD4J_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
}

kafka_ok=""
state=""
for v in "${KAFKA_VERSIONS[@]}"; do
  dir="$TOOLS_DIR/kafka-$v"
  if [ -f "$dir/.complete" ] && [ -f "$dir/libs/kafka_2.13-$v.jar" ]; then
    kafka_ok="$v"
    state="already present"
    break
  fi
done
if [ -z "$kafka_ok" ]; then
  MVN_LOG="$TOOLS_DIR/mvn.log"
  : >"$MVN_LOG"
  for v in "${KAFKA_VERSIONS[@]}"; do
    dir="$TOOLS_DIR/kafka-$v"
    rm -rf "$dir/libs.tmp" "$dir/.complete"
    mkdir -p "$dir"
    kafka_pom "$v" >"$dir/pom.xml"
    if mvn -B -q -f "$dir/pom.xml" "$MVN_DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$dir/libs.tmp" >>"$MVN_LOG" 2>&1 \
      && [ -f "$dir/libs.tmp/kafka_2.13-$v.jar" ]; then
      rm -rf "$dir/libs"
      mv "$dir/libs.tmp" "$dir/libs"
      for j in "kafka_2.13-$v.jar" "kafka-clients-$v.jar" "reload4j-$RELOAD4J_VERSION.jar" "slf4j-reload4j-$SLF4J_VERSION.jar"; do
        [ -f "$dir/libs/$j" ] || die "resolved Kafka classpath lacks $j ($dir/libs)"
      done
      echo "$v" >"$dir/.complete"
      kafka_ok="$v"
      state="installed ($(ls "$dir/libs" | wc -l) jars)"
      break
    fi
    log "kafka: $v did not resolve from Maven Central (log: $MVN_LOG)" >&2
  done
  [ -n "$kafka_ok" ] || { tail -n 30 "$MVN_LOG" >&2; die "could not resolve Kafka ${KAFKA_VERSIONS[*]} (log: $MVN_LOG)"; }
fi
# Stable path for scripts/services.sh.
ln -sfn "kafka-$kafka_ok" "$TOOLS_DIR/kafka"
log "kafka: $kafka_ok ($TOOLS_DIR/kafka/libs) $state"
log "java: $(java -version 2>&1 | sed -n '1s/^[^"]*"\([^"]*\)".*/\1/p') ($(command -v java))"
