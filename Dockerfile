# fusecache-csi: the CSI driver image (controller and node plugin), with the fusecache CLI
# that runs the shared FUSE clients.
#
#   docker build -t fusecache/fusecache-csi:0.1.0 .
#
# pyfuse3 compiles against libfuse3, so wheels are built in a first stage with the
# toolchain; the runtime stage gets only the fuse3 package (libfuse3 and fusermount3).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libfuse3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fusecache ./fusecache
COPY csi_driver ./csi_driver
COPY protos ./protos
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels fusecache \
    && rm -rf /wheels \
    && fusecache-csi --help >/dev/null \
    && fusecache --help >/dev/null
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["fusecache-csi"]
