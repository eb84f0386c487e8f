# The server image: `docker compose build` (docker-compose.yml) or `docker build -t fhir-server .`.
# Two stages: the build stage installs the package into a virtualenv; the runtime stage copies only that
# virtualenv, runs as an unprivileged user, and reports health through /health/live.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fhir_server ./fhir_server
COPY interfaces ./interfaces
COPY mappings ./mappings
COPY terminology ./terminology
COPY migrations ./migrations
RUN pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fhir --create-home fhir
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 FHIR_BINARY_STORE_URL=file:///var/lib/fhir/binary
USER 10001:10001
WORKDIR /var/lib/fhir
EXPOSE 8080 2575
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2).status != 200)"]
CMD ["fhir-server", "serve", "--host", "0.0.0.0", "--port", "8080"]
