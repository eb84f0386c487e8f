#!/usr/bin/env bash
# Install the test dependencies, start what the tests need (PostgreSQL), lint, type-check, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'

FHIR_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"
FHIR_TEST_REDIS_URL="$(bash scripts/redis.sh)"  # celery broker for the jobs tests (worker subprocesses)

# Headless Chromium for the SMART sign-in page tests (tests/integration/test_auth_browser.py).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq chromium chromium-driver >&2
fi
# The R4 specification's examples (npm package hl7.fhir.r4.examples), for the FHIR XML round trip tests.
EXAMPLES=".cache/hl7.fhir.r4.examples-4.0.1"
if [ ! -d "$EXAMPLES/package" ]; then
  mkdir -p "$EXAMPLES" && (cd "$EXAMPLES" && npm pack -q hl7.fhir.r4.examples@4.0.1 >/dev/null && tar xzf ./*.tgz)
fi
FHIR_TEST_R4_EXAMPLES="$PWD/$EXAMPLES/package"
export FHIR_TEST_POSTGRES_URL FHIR_TEST_REDIS_URL FHIR_TEST_R4_EXAMPLES

echo "== ruff"; .venv/bin/ruff check fhir_server interfaces mappings terminology migrations tests bench
echo "== mypy"; .venv/bin/mypy
echo "== hadolint"; .venv/bin/hadolint Dockerfile
echo "== pytest"
# On FHIR_TEST_WORKERS worker processes (pytest-xdist; default 2, this machine's cores): each test file
# stays on one worker so its module fixtures are built once; an xdist_group mark keeps tests that share
# something outside their worker together. Arguments come last, so `-n 0` runs serially in this process.
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${FHIR_TEST_WORKERS:-2}" --dist loadgroup "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "pytest collected no tests: failing the run" >&2; exit 1; fi
exit "$status"
