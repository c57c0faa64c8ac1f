# The gateway as an image: `docker compose up` builds it (docker-compose.yml), or
#   docker build -t specialty-gateway .
#   docker run -p 8080:8080 -p 2575:2575 -v gateway-data:/var/lib/gateway specialty-gateway
# Stage 1 builds the wheels (the project's carries profiles/ and mappings/, see setup.py); stage 2 installs
# them into a clean interpreter with no compiler and no source tree, and runs as an unprivileged user.

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip "setuptools>=77"
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY gateway ./gateway
COPY profiles ./profiles
COPY mappings ./mappings
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gateway --create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels specialty-gateway && rm -rf /wheels
USER gateway
WORKDIR /var/lib/gateway
# Embedded SQLite in the data volume unless GATEWAY_DATABASE_URL names a PostgreSQL database.
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_DATABASE_URL=sqlite+aiosqlite:////var/lib/gateway/gateway.db \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/gateway"]
EXPOSE 8080 2575
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
