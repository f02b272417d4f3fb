# The QSC cortex: ingest, store, detect, score, decide, respond, API.
# Built by `cargo xtask images` from the release binary (no cargo inside Docker).
# Runs as the unprivileged user qsc (uid 10001); its state lives in the /var/lib/qsc volume.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG BIN_DIR=bin
LABEL org.opencontainers.image.title="qsc-cortex" \
      org.opencontainers.image.description="QSC cortex: correlation and response service" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 qsc \
 && useradd --system --uid 10001 --gid qsc --home-dir /var/lib/qsc --no-create-home \
      --shell /usr/sbin/nologin qsc \
 && mkdir -p /var/lib/qsc \
 && chown qsc:qsc /var/lib/qsc \
 && chmod 0700 /var/lib/qsc
COPY ${BIN_DIR}/cortex /usr/local/bin/cortex
# The one-shot init (keys, enrollment, configs) runs from this image as root: see
# docker-compose.yml service `init`.
COPY deploy/docker/qsc-init.sh /usr/local/bin/qsc-init
USER 10001:10001
WORKDIR /var/lib/qsc
VOLUME ["/var/lib/qsc"]
EXPOSE 7443 7080
ENTRYPOINT ["/usr/local/bin/cortex"]
CMD ["--config", "/var/lib/qsc/cortex.toml", "serve"]
