# syntax=docker/dockerfile:1
# fusecache-csi: the CSI driver image (controller and node plugin), with the fusecache CLI
# that runs the shared FUSE clients.
#
#   docker build -t registry.example.com/fusecache-csi:0.1.0 .     (or: podman build ...)
#
# Reproducible: the base image is one ARG (pin it by digest, see below) and every Python
# dependency is pinned by constraints.txt. Lean: the toolchain and wheels stay in the build
# stage; the runtime stage copies only the finished virtualenv, so no layer keeps a wheel.
#
# Pin the base by digest for a reproducible build, e.g.
#   docker buildx imagetools inspect python:3.11-slim-bookworm   (shows the index digest)
#   docker build --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:<digest> ...
# The default below is the tag only: this repository could not verify a digest offline.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libfuse3-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fusecache
WORKDIR /src
# Dependencies first (pyfuse3 compiles against libfuse3): a change to the source does not
# rebuild this layer, only one to constraints.txt.
COPY constraints.txt ./
RUN /opt/fusecache/bin/pip install -r constraints.txt
# Then the package itself, without touching the dependencies installed above.
COPY pyproject.toml README.md ./
COPY fusecache ./fusecache
COPY csi_driver ./csi_driver
RUN /opt/fusecache/bin/pip install --no-deps -c constraints.txt . \
    && /opt/fusecache/bin/pip check

FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/fusecache /opt/fusecache
ENV PATH=/opt/fusecache/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN fusecache-csi --help >/dev/null && fusecache --help >/dev/null
ENTRYPOINT ["fusecache-csi"]
