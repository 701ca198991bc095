#!/usr/bin/env bash
# `npm test`: provision tools, start real PostgreSQL/Redis/Kafka on loopback in a throw-away state
# dir, build + typecheck + lint, run the policy tests (scripts/policy-test.sh, if present) and vitest,
# then print `N passed, N failed` as the last line (also written to ./test-summary.txt).
# Arguments are passed to vitest: `npm test -- test/unit`.
# A failed step (provisioning, service start, build, typecheck, lint, a suite that did not load, vitest
# exiting non-zero without a failed test) counts as one failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUMMARY="$ROOT/test-summary.txt"
rm -f "$SUMMARY"

STATE=""
CLEANED=0
cleanup() {
  [ "$CLEANED" = 1 ] && return 0
  CLEANED=1
  if [ -n "$STATE" ] && [ -d "$STATE" ]; then
    bash "$ROOT/scripts/services.sh" stop "$STATE" >&2 || true
    rm -rf "$STATE"
  fi
}
trap cleanup EXIT
trap 'echo "test.sh: interrupted" >&2; exit 130' INT
trap 'echo "test.sh: terminated" >&2; exit 143' TERM

PASSED=0
FAILED=0
STEP_FAILURES=()
step_failed() { STEP_FAILURES+=("$1"); FAILED=$((FAILED + 1)); echo "test.sh: FAILED step: $1" >&2; }
section() { printf '\n=== %s ===\n' "$*"; }

# --- provision + services -------------------------------------------------------------------------
services_up=0
section "provision"
if bash "$ROOT/scripts/provision.sh"; then
  STATE="$(mktemp -d /tmp/caracal-test.XXXXXX)"
  section "services"
  if bash "$ROOT/scripts/services.sh" start "$STATE"; then
    # shellcheck disable=SC1091
    source "$STATE/env"
    services_up=1
  else
    if [ "${CI:-}" = "true" ]; then
      echo "test.sh: service start failed; state dir $STATE:" >&2
      ls -la "$STATE" >&2 || true
      for f in "$STATE/postgres.log" "$STATE/redis.log" "$STATE/kafka/logs/server.log" "$STATE/kafka/stdout.log"; do
        [ -f "$f" ] && { echo "----- tail $f -----" >&2; tail -n 40 "$f" >&2; }
      done
      free -m >&2 || true
    fi
    step_failed "scripts/services.sh start"
  fi
else
  step_failed "scripts/provision.sh"
fi
[ "$services_up" = 1 ] || echo "test.sh: services are not running; integration tests will fail" >&2

# --- build + typecheck + lint ---------------------------------------------------------------------
section "build"
npm run --silent build || step_failed "npm run build"
section "typecheck"
npm run --silent typecheck || step_failed "npm run typecheck"
section "lint"
npm run --silent lint || step_failed "npm run lint"

# --- policy tests ---------------------------------------------------------------------------------
if [ -x "$ROOT/scripts/policy-test.sh" ]; then
  section "policy tests"
  POLICY_OUT="$(mktemp)"
  set +e
  "$ROOT/scripts/policy-test.sh" 2>&1 | tee "$POLICY_OUT"
  policy_rc=${PIPESTATUS[0]}
  set -e
  line="$(grep -Eo '[0-9]+ passed, [0-9]+ failed' "$POLICY_OUT" | tail -n 1 || true)"
  rm -f "$POLICY_OUT"
  if [ -n "$line" ]; then
    p="$(echo "$line" | awk '{print $1}')"
    f="$(echo "$line" | awk '{print $3}')"
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if [ "$policy_rc" -ne 0 ] && [ "$f" -eq 0 ]; then
      step_failed "scripts/policy-test.sh exited $policy_rc (e.g. coverage gate)"
    fi
  elif [ "$policy_rc" -ne 0 ]; then
    step_failed "scripts/policy-test.sh exited $policy_rc without a result line"
  else
    echo "test.sh: scripts/policy-test.sh printed no 'N passed, N failed' line" >&2
  fi
fi

# --- vitest ---------------------------------------------------------------------------------------
section "vitest"
VITEST_JSON="${STATE:-$(mktemp -d /tmp/caracal-vitest.XXXXXX)}/vitest.json"
[ -n "$STATE" ] || STATE="$(dirname "$VITEST_JSON")"
rm -f "$VITEST_JSON"
set +e
npx --no-install vitest run --reporter=default --reporter=json --outputFile="$VITEST_JSON" "$@"
vitest_rc=$?
set -e

if [ -s "$VITEST_JSON" ]; then
  counts="$(node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    let passed = r.numPassedTests || 0;
    let failed = r.numFailedTests || 0;
    const broken = [];
    for (const f of r.testResults || []) {
      const a = f.assertionResults || [];
      // A file that failed without a failed test: did not load, or a hook/teardown failed.
      if (f.status === "failed" && !a.some((t) => t.status === "failed")) {
        failed += 1;
        broken.push(f.name + (f.message ? ": " + f.message.split("\n")[0] : ""));
      }
    }
    for (const b of broken) console.error("test.sh: failed suite (no test failed inside): " + b);
    console.log(passed + " " + failed);' "$VITEST_JSON")" || counts=""
  if [ -n "$counts" ]; then
    PASSED=$((PASSED + ${counts% *}))
    vitest_failed=${counts#* }
    FAILED=$((FAILED + vitest_failed))
    if [ "$vitest_rc" -ne 0 ] && [ "$vitest_failed" -eq 0 ]; then
      step_failed "vitest exited $vitest_rc without a failed test (unhandled error?)"
    fi
  else
    step_failed "could not parse $VITEST_JSON"
  fi
else
  step_failed "vitest exited $vitest_rc and wrote no JSON report"
fi

# --- summary (last line) --------------------------------------------------------------------------
cleanup
trap - EXIT INT TERM
if [ "${#STEP_FAILURES[@]}" -gt 0 ]; then
  echo "test.sh: failed steps (counted as failures): ${STEP_FAILURES[*]}" >&2
fi
echo "$PASSED passed, $FAILED failed" >"$SUMMARY"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
