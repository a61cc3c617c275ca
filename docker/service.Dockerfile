# The service image: the project in a virtual environment with CPU-only torch, run as a non-root user.
#
#   docker compose build service
#   docker build -f docker/service.Dockerfile --build-arg BASE_IMAGE=... --build-arg TORCH_INDEX_URL=... .
#
# BASE_IMAGE: a Debian-based image with Python 3.11+ (python3 and its venv module). TORCH_INDEX_URL: where
# torch and torchvision come from; the CPU-only index keeps CUDA's libraries (about 4 GB) out of the image.
# An optional build secret pip_ca is a CA bundle for pip, for registries behind a TLS-intercepting proxy; as
# a secret it never lands in a layer.
#
# Few layers on purpose: with Docker's vfs storage driver every layer is a full copy of the file system below
# it. Sources come in through bind mounts rather than COPY, and the final stage adds one layer to the base.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# Everything the final image needs lives under /opt/simclr, so that one COPY takes it over.
ENV PATH=/opt/simclr/venv/bin:$PATH

# torch first, from its own index, so that the dependencies after it find it satisfied and add no CUDA build;
# then the other dependencies, read from pyproject.toml alone: a source change reuses this layer.
RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 -m venv /opt/simclr/venv \
    && pip install --index-url "$TORCH_INDEX_URL" torch torchvision \
    && python -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; \
                  o = p["optional-dependencies"]; print("\n".join(p["dependencies"] + o["serve"] + o["milvus"] + o["grpc"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The project itself, not editable (the sources stay behind), and pip goes: nothing installs at run time.
# An empty named volume mounted on a folder starts with its owner and mode: the indexes belong to the
# service's uid; the data folder is world-writable (sticky, like /tmp) as in the trainer image, because the
# two share the cifar10 volume and either may create it.
RUN --mount=type=secret,id=pip_ca --mount=type=bind,target=/src,rw \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    pip install --no-deps /src \
    && pip uninstall -y pip \
    && mkdir -p /opt/simclr/indexes /opt/simclr/data/cifar10 \
    && chown 10001:10001 /opt/simclr/indexes && chmod 1777 /opt/simclr/data/cifar10


FROM ${BASE_IMAGE}
COPY --from=build /opt/simclr /opt/simclr
ENV PATH=/opt/simclr/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SIMCLR_HOST=0.0.0.0 \
    SIMCLR_PORT=8000 \
    SIMCLR_GRPC_PORT=8001 \
    SIMCLR_BUNDLE=/bundle \
    SIMCLR_INDEX_ROOT=/opt/simclr/indexes \
    SIMCLR_DATA_DIR=/opt/simclr/data/cifar10
# A fixed, unnamed uid: no layer for a user account, and what it writes into volumes has a known owner.
USER 10001:10001
# HTTP, and the Open Inference Protocol over gRPC: Triton's two ports.
EXPOSE 8000 8001
# Alive as soon as it listens: /healthz answers while the model loads; /readyz says what can be served (embeddings
# and classes first, search once the index, built on first start from SIMCLR_DATA_DIR, is ready).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:${SIMCLR_PORT}/healthz', timeout=4)"
ENTRYPOINT ["python", "-m", "service"]
