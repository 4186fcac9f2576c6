# imagine-bot: a small, non-root image that runs `imagine-bot run`. The README's "Docker" section says how
# to build and run it; `make container-test` builds it and runs exactly those commands.
# The base is pinned to a patch release, and the Python packages to constraints.txt, for reproducible images.

FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# the pinned dependencies first, in their own layer: a change of code alone reuses it
COPY constraints.txt ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-compile -r constraints.txt
COPY pyproject.toml README.md ./
COPY imagine_bot ./imagine_bot
COPY core ./core
COPY bots ./bots
# with the postgres extra: one image runs on SQLite (the default) or PostgreSQL (DATABASE_URL)
RUN /opt/venv/bin/pip install --no-compile -c constraints.txt '.[postgres]'

FROM python:3.11.14-slim-bookworm
# a relative IMAGINE_DB_PATH (the default, and .env.example's) is taken under IMAGINE_DATA_DIR: the volume
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IMAGINE_DATA_DIR=/data \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=3000
RUN useradd --create-home --no-log-init --uid 10001 imagine && mkdir /data && chown 10001 /data
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/imagine
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '3000'), timeout=4)"]
CMD ["imagine-bot", "run"]
