# NATS with JetStream for the scale-out cortex (docker-compose.yml profile "scale"), from
# Debian's nats-server package: no image registry beyond the Debian base is needed.
# Runs as the unprivileged user qsc-nats (uid 10004); JetStream's files live in /var/lib/qsc-nats.
# (Not the package's own `nats` user: its postinst refuses a `nats` made beforehand outside the
# system uid range, and a fixed uid keeps the volume's owner stable across image rebuilds.)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="qsc-nats" \
      org.opencontainers.image.description="NATS JetStream (Debian's nats-server) for QSC replicas" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nats-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 10004 qsc-nats \
 && useradd --uid 10004 --gid qsc-nats --no-create-home --shell /usr/sbin/nologin qsc-nats \
 && install -d -o qsc-nats -g qsc-nats -m 0700 /var/lib/qsc-nats
USER 10004:10004
VOLUME ["/var/lib/qsc-nats"]
EXPOSE 4222
ENTRYPOINT ["nats-server", "--jetstream", "--store_dir", "/var/lib/qsc-nats"]
CMD ["--addr", "127.0.0.1", "--port", "4222"]
