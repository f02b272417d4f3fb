# NATS with JetStream for the scale-out cortex (docker-compose.yml profile "scale"), from
# Debian's nats-server package: no image registry beyond the Debian base is needed.
# Runs as the unprivileged user nats (uid 10004); JetStream's files live in /var/lib/qsc-nats.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="qsc-nats" \
      org.opencontainers.image.description="NATS JetStream (Debian's nats-server) for QSC replicas" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10004 nats \
 && useradd --system --uid 10004 --gid nats --no-create-home --shell /usr/sbin/nologin nats \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nats-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && install -d -o nats -g nats -m 0700 /var/lib/qsc-nats
USER 10004:10004
VOLUME ["/var/lib/qsc-nats"]
EXPOSE 4222
ENTRYPOINT ["nats-server", "--jetstream", "--store_dir", "/var/lib/qsc-nats"]
CMD ["--addr", "127.0.0.1", "--port", "4222"]
