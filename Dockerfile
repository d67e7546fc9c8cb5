# syntax=docker/dockerfile:1
#
# Sluice container image: the `sluice` binary (crate proxy/) on a distroless runtime.
#
#   docker buildx build --platform linux/arm64 -t sluice .     (from the repository root)
#
# The build context is the Cargo workspace root; .dockerignore admits only the workspace's
# sources. Built for the platform it is asked for: Fargate ARM wants linux/arm64 (an x86 host
# builds that under QEMU, slowly; an arm64 host or CI runner builds it natively).

# ---- build ---------------------------------------------------------------------------------
# Same Debian release as the runtime below, so the binary links against the same glibc.
FROM rust:1.95-slim-bookworm AS build
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# The whole workspace, not just proxy/: cargo loads every member's manifest (and the root
# package's targets) before it builds any one package.
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binary is
# copied out in the same step because a cache mount is not part of the image.
RUN --mount=type=cache,id=sluice-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=sluice-target-${TARGETARCH},target=/src/target \
    cargo build --locked --release -p sluice --bin sluice \
    && install -D -m 0755 /src/target/release/sluice /out/usr/local/bin/sluice \
    && /out/usr/local/bin/sluice --version

# The RDS global CA bundle, which Sluice uses to verify the database's certificate
# (SLUICE_BACKEND_TLS=verify-identity). Not pinned by default: AWS adds certificate
# authorities to this file when it rotates them, so a fixed digest would break every build
# after an update. HTTPS to the AWS-owned host authenticates it; to pin a copy you have
# reviewed, pass --build-arg RDS_CA_SHA256=<sha256 of that copy>.
ARG RDS_CA_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
ARG RDS_CA_SHA256=""
RUN mkdir -p /out/etc/sluice \
    && wget -q -O /out/etc/sluice/rds-ca.pem "${RDS_CA_URL}" \
    && if [ -n "${RDS_CA_SHA256}" ]; then \
         echo "${RDS_CA_SHA256}  /out/etc/sluice/rds-ca.pem" | sha256sum -c -; \
       fi \
    && grep -q -- '-----BEGIN CERTIFICATE-----' /out/etc/sluice/rds-ca.pem \
    && chmod 0444 /out/etc/sluice/rds-ca.pem \
    && printf '%s\n' \
       '# Sluice in a container: every setting comes from SLUICE_* environment variables' \
       '# (see proxy/sluice.example.toml for the keys and their defaults).' \
       > /out/etc/sluice/sluice.toml

# ---- runtime -------------------------------------------------------------------------------
# glibc, libgcc and CA certificates, no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
ENV SLUICE_CONFIG=/etc/sluice/sluice.toml \
    SLUICE_LISTEN=0.0.0.0:3306 \
    SLUICE_HTTP_LISTEN=0.0.0.0:9090 \
    SLUICE_BACKEND_TLS_CA_FILE=/etc/sluice/rds-ca.pem \
    SLUICE_LOG_FORMAT=json
# Nothing is written at run time: the image works with a read-only root filesystem.
USER 65532:65532
# 3306: MySQL clients. 9090: GET /healthz, GET /readyz, GET /metrics.
EXPOSE 3306 9090
# SIGTERM: stop accepting, let open transactions finish (SLUICE_SHUTDOWN_TIMEOUT), exit.
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the image has no shell or HTTP client; the load balancer checks /readyz.
ENTRYPOINT ["/usr/local/bin/sluice"]
