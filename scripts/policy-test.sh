#!/usr/bin/env bash
# Rego unit tests + coverage gate + decision fixtures for policies/ (see policies/README.md), through
# `caracal policy test` (the compiled CLI: run `npm run build` first; scripts/test.sh builds before this).
#
#   scripts/policy-test.sh            # uses $CARACAL_OPA_BIN, else `opa` on PATH
#   POLICY_COVERAGE_MIN=95 scripts/policy-test.sh
#   POLICY_JUNIT=out.xml scripts/policy-test.sh   # JUnit report (default: coverage/policy-test-junit.xml)
#
# Output: the text summary (Rego tests, coverage, fixtures on the WASM and through opa eval), the JUnit
# report's path, and a final line exactly "N passed, N failed" (Rego tests + coverage gate + fixtures).
# Exit status: `caracal policy test`'s (0 all passed, 3 Rego test, 4 coverage, 5 fixture, 6 compile, 1 error).
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
if [[ ! -f dist/src/cli/main.js ]]; then
  echo "policy-test: dist/ is not built (run npm run build)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
MIN="${POLICY_COVERAGE_MIN:-90}"
JUNIT="${POLICY_JUNIT:-coverage/policy-test-junit.xml}"
mkdir -p "$(dirname "$JUNIT")"

# The CLI prints "junit report: <file>", the text summary and, last, "N passed, N failed".
node bin/caracal.js policy test --policies policies/ --coverage-min "$MIN" --opa "$OPA" --format junit --out "$JUNIT"
status=$?
if [[ "$status" -eq 1 || "$status" -eq 2 ]]; then
  # An error before any result (the CLI printed one line on stderr): counted as one failure.
  echo "0 passed, 1 failed"
fi
exit "$status"
