#!/usr/bin/env bash
# Rego unit tests + coverage gate for policies/ (see policies/README.md).
#
#   scripts/policy-test.sh            # uses $CARACAL_OPA_BIN, else `opa` on PATH
#   POLICY_COVERAGE_MIN=95 scripts/policy-test.sh
#
# Output: `opa test -v`, the coverage, and a final line exactly "N passed, N failed" (opa tests).
# Exit status is non-zero when a test fails, the policies do not load, or coverage is below the gate.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

OPA="${CARACAL_OPA_BIN:-}"
if [[ -z "$OPA" ]]; then
  OPA="$(command -v opa || true)"
fi
if [[ -z "$OPA" || ! -x "$OPA" ]]; then
  echo "policy-test: no opa binary (set CARACAL_OPA_BIN or put opa on PATH)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
MIN="${POLICY_COVERAGE_MIN:-90}"
POLICIES=policies/

status=0
"$OPA" test "$POLICIES" -v || status=1

results="$("$OPA" test "$POLICIES" --format=json 2>&1)"
counts="$(printf '%s' "$results" | node -e '
  let s = "";
  process.stdin.on("data", (d) => (s += d)).on("end", () => {
    let r;
    try { r = JSON.parse(s); } catch { process.stdout.write("error"); return; }
    if (!Array.isArray(r)) { process.stdout.write("error"); return; }
    const failed = r.filter((t) => t.fail || t.error).length;
    const passed = r.filter((t) => !t.fail && !t.error && !t.skip).length;
    process.stdout.write(`${passed} ${failed}`);
  });
')"
if [[ "$counts" == "error" || -z "$counts" ]]; then
  echo "policy-test: opa could not load or run the tests (counted as 1 failure):" >&2
  printf '%s\n' "$results" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
read -r passed failed <<<"$counts"
[[ "$failed" -eq 0 ]] || status=1

coverage="$("$OPA" test "$POLICIES" --coverage --format=json 2>/dev/null | node -e '
  let s = "";
  process.stdin.on("data", (d) => (s += d)).on("end", () => {
    try { const c = JSON.parse(s).coverage; process.stdout.write(typeof c === "number" ? String(c) : "error"); }
    catch { process.stdout.write("error"); }
  });
')"
if [[ "$failed" -ne 0 ]]; then
  echo "coverage: not reported by opa while tests fail" >&2
elif [[ "$coverage" == "error" || -z "$coverage" ]]; then
  echo "policy-test: could not compute coverage" >&2
  status=1
elif node -e 'process.exit(Number(process.argv[1]) >= Number(process.argv[2]) ? 0 : 1)' "$coverage" "$MIN"; then
  echo "coverage: ${coverage}% (gate ${MIN}%)"
else
  echo "coverage: ${coverage}% is below the ${MIN}% gate" >&2
  status=1
fi

echo "${passed} passed, ${failed} failed"
exit "$status"
