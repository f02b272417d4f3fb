# QSC guardian-alpha: the eBPF host agent. It loads kernel programs, so it runs as root inside
# the container, with exactly the capabilities it needs granted at run time (see
# docker-compose.yml and the README: SYS_ADMIN, NET_ADMIN, SYS_PTRACE, KILL, host pid namespace,
# tracefs/BTF/cgroup mounts) rather than `privileged: true`.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG BIN_DIR=bin
LABEL org.opencontainers.image.title="qsc-guardian-alpha" \
      org.opencontainers.image.description="QSC guardian-alpha: eBPF host sensor and responder" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN mkdir -p /var/lib/qsc && chmod 0700 /var/lib/qsc
COPY ${BIN_DIR}/guardian-alpha /usr/local/bin/guardian-alpha
WORKDIR /var/lib/qsc
VOLUME ["/var/lib/qsc"]
ENTRYPOINT ["/usr/local/bin/guardian-alpha"]
CMD ["run", "--config", "/var/lib/qsc/guardian-alpha.toml"]
