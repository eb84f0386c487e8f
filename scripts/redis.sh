#!/usr/bin/env bash
# Start a throwaway Redis for the tests (celery broker) on 127.0.0.1, installing Debian's package when absent.
# Prints the broker URL.
set -euo pipefail
PORT="${FHIR_TEST_REDIS_PORT:-63799}"
DIR="${FHIR_TEST_REDIS_DIR:-/tmp/fhir-test-redis}"
URL="redis://127.0.0.1:${PORT}/0"
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
fi
if redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1; then echo "$URL"; exit 0; fi
mkdir -p "$DIR"
redis-server --bind 127.0.0.1 --port "$PORT" --daemonize yes --dir "$DIR" --save "" --appendonly no \
  --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid" >&2
for _ in $(seq 1 100); do
  if redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1; then echo "$URL"; exit 0; fi
  sleep 0.1
done
echo "redis-server did not start on port $PORT (see $DIR/redis.log)" >&2
exit 1
