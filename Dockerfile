# syntax=docker/dockerfile:1
# fusecache-csi: the CSI driver image (controller and node plugin), with the fusecache CLI
# that runs the shared FUSE clients.
#
#   docker build -t registry.example.com/fusecache-csi:0.1.0 .     (or: podman build ...)
#
# Reproducible: the base image is pinned by digest (one ARG) and every Python dependency is
# pinned by constraints.txt. Lean: the toolchain and wheels stay in the build stage; the
# runtime stage copies only the finished virtualenv, so no layer keeps a wheel.
#
# The tag in front of the digest is for people; the digest decides what is pulled. To move to
# a newer base, look up the current index digest and pass it, or change it here:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
#   docker build --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:<digest> ...
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

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
