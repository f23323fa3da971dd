# syntax=docker/dockerfile:1
# notifier: pushes events published to RabbitMQ to authenticated WebSocket clients.
#
#   docker build -t notifier .
#   docker run -p 8000:8000 -e NOTIFIER_AMQP_URL=amqp://user:pass@rabbitmq:5672/ \
#     -e NOTIFIER_JWT_SECRET=... -e NOTIFIER_API_KEYS=... -e NOTIFIER_WORKERS=2 notifier
#
# Configured entirely by NOTIFIER_* environment variables (config/notifier.env lists them all).
# NOTIFIER_WORKERS is the number of processes, each a full instance; "auto" (the default here) is one per core
# the container may use (its CPU quota or affinity).
# tests/test_container.py replays this recipe outside Docker: keep the build in one `pip wheel` and the
# install in one `pip install`, or update the replay with it.

# Stage 1: wheels of notifier and of everything it depends on, built from the source alone, at the versions
# constraints.txt pins (the ones the tests run with); stage 2 installs only these wheels, so it gets them too.
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY notifier ./notifier
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --disable-pip-version-check --wheel-dir /wheels -c constraints.txt .

# Stage 2: the runtime. Only the installed wheels; no source, no build tools, no pip cache.
FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The wheels are mounted for the install only, so they never become a layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    groupadd --system --gid 10001 notifier \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin notifier \
    && pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels /wheels/notifier-*.whl

ENV NOTIFIER_HOST=0.0.0.0 \
    NOTIFIER_PORT=8000 \
    NOTIFIER_LOG_FORMAT=json \
    NOTIFIER_WORKERS=auto
USER 10001:10001
EXPOSE 8000
# SIGTERM starts the graceful drain: clients get close code 1012, and the process exits within
# NOTIFIER_SHUTDOWN_TIMEOUT_S + 5 s. Give `docker stop -t` (or a grace period) more than that.
STOPSIGNAL SIGTERM
# slim has no curl; the interpreter is enough. Follows NOTIFIER_PORT if it is changed at run time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NOTIFIER_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["notifier", "serve"]
