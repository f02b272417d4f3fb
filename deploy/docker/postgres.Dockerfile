# PostgreSQL for the scale-out cortex (docker-compose.yml profile "scale"), from Debian's
# postgresql package: no image registry beyond the Debian base is needed.
# Runs as the unprivileged user qsc-postgres (uid 10003); the cluster lives in
# /var/lib/qsc-postgres, created on first start with the role and database `qsc` (password from
# the compose `init`). The package's own `postgres` user and default cluster are not used (and
# the default cluster is not even created).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="qsc-postgres" \
      org.opencontainers.image.description="PostgreSQL (Debian's postgresql) for QSC replicas" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/qsc.conf \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 10003 qsc-postgres \
 && useradd --uid 10003 --gid qsc-postgres --no-create-home --shell /usr/sbin/nologin qsc-postgres \
 && install -d -o qsc-postgres -g qsc-postgres -m 0700 /var/lib/qsc-postgres
COPY deploy/docker/qsc-postgres.sh /usr/local/bin/qsc-postgres
USER 10003:10003
VOLUME ["/var/lib/qsc-postgres"]
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/qsc-postgres"]
