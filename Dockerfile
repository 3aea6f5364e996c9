# hj212gw gateway image: slim, non-root, health-checked.
# The full image has the C compiler that mypyc needs for the compiled modules (setup.py); the
# runtime image gets only the built package.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/hj212gw hj212gw
COPY --from=build /install /usr/local
USER hj212gw
WORKDIR /var/lib/hj212gw
# The admin HTTP server listens beyond loopback here, so it needs a bearer token (it refuses to
# start without one): mount it as a secret file, e.g. `docker run -v ./http_token:/run/secrets/
# hj212gw_http_token:ro` or compose `secrets:` (deploy/compose.yaml). /healthz needs no token.
ENV HJ212GW_HTTP=0.0.0.0:9213 \
    HJ212GW_HTTP_TOKEN_FILE=/run/secrets/hj212gw_http_token \
    HJ212GW_DATA_DIR=/var/lib/hj212gw/data \
    HJ212GW_LOG_FORMAT=json
EXPOSE 9212 9213
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9213/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["hj212gw"]
CMD ["serve"]
