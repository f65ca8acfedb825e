# alphabus: one image for every service (sim, market, factor, position, recorder, paper).
#
#   docker build -t alphabus:latest .          # dependencies from PyPI, pinned in docker/requirements.txt
#
# Offline, from a wheel directory inside the build context (no network at all during the build):
#
#   pip download --only-binary=:all: -d docker/wheels \
#       -r docker/requirements.txt -r docker/build-requirements.txt
#   docker build --build-arg WHEELS=docker/wheels -t alphabus:latest .
#
# (For a base whose Python or platform differs from the host's, add pip download's --python-version
# and --platform options.) Another base image: --build-arg BASE_IMAGE=...; it needs python3 (3.11 or
# newer) with the venv module, nothing else: no pip, no compiler (every dependency is a wheel).
# docker/base_image.py builds such a base from Debian's packages when no registry can be reached.
#
# Works with the classic builder and BuildKit alike. The final stage holds the base image, a virtual
# environment with the dependencies at /opt/alphabus, alphabus itself at /opt/alphabus-app (on the
# venv's path), the default configuration and a non-root user; no build tools, no pip in the venv.
ARG BASE_IMAGE=python:3.11-slim

# -- deps: a virtual environment with the pinned dependencies (rebuilt only when docker/ changes) --
FROM ${BASE_IMAGE} AS deps
# Lets a cleanup find this file's leftover untagged stage images (the classic builder keeps them).
LABEL alphabus.stage=build
# A folder under docker/ in the build context holding wheels; empty = download from the index.
ARG WHEELS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CONSTRAINT=/src/docker/build-requirements.txt
WORKDIR /src
COPY docker/ /src/docker/
# The project itself goes to /opt/alphabus-app (next stage, found through a .pth file), so a code
# change leaves this layer and the final image's copy of it alone.
RUN set -eu; \
    if [ -n "$WHEELS" ]; then \
        case "$WHEELS" in docker/*) ;; *) echo "WHEELS must be a folder under docker/, got $WHEELS" >&2; exit 1;; esac; \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS="/src/$WHEELS"; \
    fi; \
    python3 -m venv /opt/alphabus; \
    /opt/alphabus/bin/python -m pip install --only-binary=:all: -r docker/requirements.txt; \
    echo /opt/alphabus-app > "$(/opt/alphabus/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/alphabus-app.pth"

# -- app: alphabus itself, built from the context into /opt/alphabus-app ----------------------------
FROM deps AS app
ARG WHEELS=
COPY . /src/
RUN set -eu; \
    if [ -n "$WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="/src/$WHEELS"; fi; \
    PYTHONDONTWRITEBYTECODE=1 /opt/alphabus/bin/python -m pip install --no-deps --no-compile \
        --target /opt/alphabus-app /src; \
    /opt/alphabus/bin/python -m compileall -q /opt/alphabus-app; \
    PYTHONDONTWRITEBYTECODE=1 /opt/alphabus/bin/python -m pip check; \
    PATH=/opt/alphabus-app/bin:$PATH PYTHONDONTWRITEBYTECODE=1 alphabus --help > /dev/null

# -- venv: the dependencies without pip and setuptools ---------------------------------------------
FROM deps AS venv
RUN /opt/alphabus/bin/python -m pip uninstall --yes pip setuptools 2>/dev/null || true; \
    rm -f /opt/alphabus/bin/pip /opt/alphabus/bin/pip3 /opt/alphabus/bin/pip3.*

# -- the image: base + venv + app + a non-root user; no build tools, no pip in the venv -------------
FROM ${BASE_IMAGE}
# /data/out (WORKDIR: factor_calc.json and the history) and /data/bmac (the crawler's directory) are
# owned by the service user here, so an empty named volume mounted there starts with the same owner
# and the default configuration.
RUN set -eu; \
    if command -v useradd > /dev/null; then \
        useradd --uid 10001 --user-group --home-dir /home/alphabus --create-home --shell /usr/sbin/nologin alphabus; \
    else \
        echo 'alphabus:x:10001:10001::/home/alphabus:/usr/sbin/nologin' >> /etc/passwd; \
        echo 'alphabus:x:10001:' >> /etc/group; \
        mkdir -p /home/alphabus; chown 10001:10001 /home/alphabus; \
    fi; \
    mkdir -p /data/out /data/bmac; \
    chown 10001:10001 /data/out /data/bmac
COPY --chown=10001:10001 docker/factor_calc.json /data/out/factor_calc.json
COPY --from=venv /opt/alphabus /opt/alphabus
COPY --from=app /opt/alphabus-app /opt/alphabus-app
ENV PATH=/opt/alphabus-app/bin:/opt/alphabus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ALPHABUS_WORKDIR=/data/out \
    ALPHABUS_BIND_ALL=1 \
    ALPHABUS_HEALTH_FILE=/tmp/alphabus.health
USER 10001:10001
WORKDIR /data/out
ENTRYPOINT ["alphabus"]
CMD ["--help"]
