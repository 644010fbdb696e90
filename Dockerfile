# One image for every Ringlab service: the command picks the service.
#   python -m ringlab_cpu | python -m ringlab_hypervisor | python -m ringlab_guest | ringlab ...
#
# Build with registry access:      docker build -t ringlab:latest .
# Build offline (no registry):     scripts/docker-images   (a debootstrap base, a host-built
#                                  wheelhouse/, then --build-arg BASE_IMAGE=ringlab-base:bookworm
#                                  --build-arg PIP_OFFLINE=1)
#
# Written for the classic builder too (no BuildKit-only syntax): Debian's engine 20.10 and
# docker-compose 1.29 build with it. Few steps on purpose: with the vfs storage driver (the only
# one on some machines) every step copies the whole root file system.
ARG BASE_IMAGE=python:3.12-slim

# --- build: a virtual environment in /opt/ringlab (bookworm's system Python is externally
# managed, PEP 668; a venv copies cleanly into the final stage of the same base).
FROM ${BASE_IMAGE} AS build
ARG PIP_OFFLINE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Dependencies first, from pyproject.toml alone, so that editing the source keeps this (slow)
# layer cached. Wheels come from the host's wheelhouse/ (empty when the build can reach PyPI).
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml /src/pyproject.toml
RUN python3 -m venv /opt/ringlab \
 && python3 -c 'import tomllib; d = tomllib.load(open("/src/pyproject.toml", "rb")); print("\n".join(d["project"]["dependencies"]))' > /tmp/requirements.txt \
 && /opt/ringlab/bin/pip install -q $([ "$PIP_OFFLINE" = 1 ] && echo --no-index) \
        --find-links /wheelhouse -r /tmp/requirements.txt
# Then the project itself (the build context is only what .dockerignore lets through), the
# health probe the compose file's checks run, and the examples for the client service.
COPY . /src/
RUN /opt/ringlab/bin/pip install -q --no-deps $([ "$PIP_OFFLINE" = 1 ] && echo --no-index) \
        --find-links /wheelhouse /src \
 && install -m 0755 /src/scripts/ringlab_health.py /opt/ringlab/bin/ringlab-health \
 && cp -r /src/examples /opt/ringlab/examples

# --- the image: the venv and a non-root user, nothing else.
FROM ${BASE_IMAGE}
ENV PATH=/opt/ringlab/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# /run/ringlab/ROLE: where compose mounts each role's credentials volume; created here, owned by
# ringlab, so that a new named volume mounted there starts with that ownership and mode (the
# secrets service writes into them; Redis, another user, reads its ACL file from redis/).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/ringlab ringlab \
 && ln -s /opt/ringlab/examples /home/ringlab/examples \
 && mkdir -p /run/ringlab/secret /run/ringlab/cpu /run/ringlab/hypervisor /run/ringlab/guest /run/ringlab/redis \
 && chown -R ringlab:ringlab /run/ringlab \
 && chmod 0700 /run/ringlab/secret /run/ringlab/cpu /run/ringlab/hypervisor /run/ringlab/guest \
 && chmod 0755 /run/ringlab /run/ringlab/redis
COPY --from=build /opt/ringlab /opt/ringlab
USER ringlab
WORKDIR /home/ringlab
CMD ["ringlab", "--help"]
