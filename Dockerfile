# One image for every Ringlab service: the command picks the service.
#   python -m ringlab_cpu | python -m ringlab_hypervisor | python -m ringlab_guest | ringlab ...
#
# Build with registry access:      docker build -t ringlab .
# Build offline (no registry):     scripts/docker-images   (a debootstrap base, a host-built
#                                  wheelhouse/, then --build-arg BASE_IMAGE=ringlab-base:bookworm
#                                  --build-arg PIP_OFFLINE=1)
#
# Written for the classic builder too (no BuildKit-only syntax): Debian's engine 20.10 and
# docker-compose 1.29 build with it.
ARG BASE_IMAGE=python:3.12-slim

# --- requirements: the project's runtime dependencies, read from pyproject.toml. Only this
# small file reaches the next stage, so editing anything else in pyproject.toml keeps the
# (slow) dependency layer cached.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c 'import tomllib; d = tomllib.load(open("/src/pyproject.toml", "rb")); print("\n".join(d["project"]["dependencies"]))' > /requirements.txt

# --- deps: a virtual environment with the dependencies only (bookworm's system Python is
# externally managed, PEP 668, and a venv copies cleanly between stages of the same base).
FROM ${BASE_IMAGE} AS deps
ARG PIP_OFFLINE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Wheels built on the host (scripts/docker-images); may be empty when the build can reach PyPI.
COPY wheelhouse/ /wheelhouse/
COPY --from=requirements /requirements.txt /requirements.txt
RUN python3 -m venv /opt/ringlab \
 && /opt/ringlab/bin/pip install -q $([ "$PIP_OFFLINE" = 1 ] && echo --no-index) \
        --find-links /wheelhouse -r /requirements.txt

# --- wheel: the project itself, built from source (changes often, so it comes last).
FROM deps AS wheel
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
COPY services/ /src/services/
RUN /opt/ringlab/bin/pip wheel -q --no-deps $([ "$PIP_OFFLINE" = 1 ] && echo --no-index) \
        --find-links /wheelhouse -w /dist /src

# --- the image: the dependency venv, the project's wheel, a health probe, a non-root user.
FROM ${BASE_IMAGE}
ENV PATH=/opt/ringlab/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/ringlab ringlab
COPY --from=deps /opt/ringlab /opt/ringlab
COPY --from=wheel /dist/ /tmp/dist/
RUN /opt/ringlab/bin/pip install -q --no-index --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
# The compose health checks run this: `ringlab-health` asks the standard gRPC health service of
# the server in this container (port taken from RINGLAB_LISTEN).
COPY scripts/ringlab_health.py /opt/ringlab/bin/ringlab-health
COPY examples/ /home/ringlab/examples/
USER ringlab
WORKDIR /home/ringlab
CMD ["ringlab", "--help"]
