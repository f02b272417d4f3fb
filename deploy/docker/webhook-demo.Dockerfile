# A demo SOAR webhook receiver: verifies the Standard Webhooks signature of every POST with the
# shared secret in /var/lib/qsc-webhook/secret (written by the compose `init` service), prints
# what it accepted and appends it to /var/lib/qsc-webhook/accepted.jsonl. For trying the
# cortex's webhooks locally (docker-compose.yml profile "demo"), not for production.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="qsc-webhook-demo" \
      org.opencontainers.image.description="QSC demo webhook receiver (verifies and records signed alerts)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10002 webhook \
 && useradd --system --uid 10002 --gid webhook --no-create-home --shell /usr/sbin/nologin webhook \
 && install -d -o webhook -g webhook -m 0700 /var/lib/qsc-webhook
COPY deploy/docker/webhook-receiver.py /usr/local/bin/webhook-receiver
USER 10002:10002
VOLUME ["/var/lib/qsc-webhook"]
EXPOSE 9090
ENTRYPOINT ["python3", "/usr/local/bin/webhook-receiver"]
CMD ["--listen", "127.0.0.1:9090", "--secret-file", "/var/lib/qsc-webhook/secret", \
     "--record", "/var/lib/qsc-webhook/accepted.jsonl"]
