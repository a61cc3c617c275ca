# The trainer image: the project with CUDA torch, for `docker compose --profile train run --rm trainer ...`.
#
#   docker compose --profile train run --rm trainer trainer.pretrain --data-dir /data/cifar10 --out /runs/r18
#
# The PyTorch CUDA wheels carry the CUDA runtime and cuDNN themselves: the host needs only the NVIDIA driver and
# the NVIDIA Container Toolkit, and the base image needs no CUDA. TORCH_INDEX_URL picks the CUDA version
# (default CUDA 12.8, for drivers 570 and newer). One stage: the wheels need no compiler, and pip stays for
# experiments. The build secret pip_ca and the few layers are as in service.Dockerfile.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
ENV PATH=/opt/simclr/venv/bin:$PATH

RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 -m venv /opt/simclr/venv \
    && pip install --index-url "$TORCH_INDEX_URL" torch torchvision \
    && python -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; \
                  print("\n".join(p["dependencies"] + p["optional-dependencies"]["train"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The data and runs folders are world-writable (sticky, like /tmp), and so are the named volumes that start
# from them: `run --user "$(id -u):$(id -g)"`, which writes into a host folder as you, works as well as the
# default non-root uid.
RUN --mount=type=secret,id=pip_ca --mount=type=bind,target=/src,rw \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    pip install --no-deps /src \
    && mkdir -p /runs /data/cifar10 && chmod 1777 /runs /data/cifar10

USER 10001:10001
# Any uid has a writable HOME: the decoded-image cache (~/.cache/simclr-cifar) goes there.
ENV HOME=/tmp PYTHONUNBUFFERED=1
WORKDIR /runs
ENTRYPOINT ["python", "-m"]
CMD ["trainer.pretrain", "--help"]
