# QSC guardian-beta: file/config/backup integrity, certificates, auto-heal.
# It must read every file of the watched trees (/etc/shadow included), so it runs as root with
# every capability dropped but DAC_READ_SEARCH (plus DAC_OVERRIDE, CHOWN, FOWNER where auto-heal
# writes): see docker-compose.yml. The watched trees are mounted read-only under /host.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG BIN_DIR=bin
LABEL org.opencontainers.image.title="qsc-guardian-beta" \
      org.opencontainers.image.description="QSC guardian-beta: integrity agent with auto-heal" \
      org.opencontainers.image.licenses="Apache-2.0"
# The CA bundle is the default trust store of the certificate checks.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && mkdir -p /var/lib/qsc && chmod 0700 /var/lib/qsc
COPY ${BIN_DIR}/guardian-beta /usr/local/bin/guardian-beta
COPY deploy/docker/guardian-beta-start.sh /usr/local/bin/guardian-beta-start
WORKDIR /var/lib/qsc
VOLUME ["/var/lib/qsc"]
ENTRYPOINT ["/usr/local/bin/guardian-beta-start"]
CMD ["/var/lib/qsc/guardian-beta.toml"]
