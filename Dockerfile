# syntax=docker/dockerfile:1
# The gateway image: `loragate serve` in front of vLLM replicas named by LORAGATE_ENGINES. It holds
# neither torch nor vLLM; the engine has its own image (docker/engine.Dockerfile, or vLLM's own).
#
#   docker build -t loragate:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v loragate-data:/var/lib/loragate -p 8080:8080 \
#     -e LORAGATE_ENGINES='[{"name": "default", "base_model": "...", "urls": ["http://vllm:8000"]}]' \
#     -e LORAGATE_DATABASE_URL=postgresql+asyncpg://... loragate:0.1.0
#   docker run ... loragate:0.1.0 db upgrade        # migrations, once per release
#
# Build arguments:
#   BASE        an image with python3 (3.11+) and the venv module; default the official slim one.
#               docker/base-image.sh builds one from Debian packages alone.
#   WITH_PEFT   true: add peft and the CPU build of torch (about 1 GB more) for the worker process
#               that reads adapter configs at registration (see the README, "Deploying on
#               Kubernetes"). Without it, register adapters with the CLI where peft is installed.
#   TORCH_SPEC, TORCH_INDEX   which torch WITH_PEFT installs, and the extra index it comes from.
#
# pip uses whatever configuration the build mounts (`buildah bud $(python3 docker/pip_mounts.py
# CONF)` mounts this machine's); none of it reaches the image: the last stage runs no command.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG WITH_PEFT=false
ARG TORCH_SPEC=torch==2.13.0+cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY adapters ./adapters
COPY rollout ./rollout
COPY monitoring ./monitoring
COPY alembic ./alembic
# Editable: migrations are read from /app/alembic, beside the code.
RUN /opt/venv/bin/pip install --quiet -e . \
 && if [ "$WITH_PEFT" = true ]; then \
      /opt/venv/bin/pip install --quiet ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
        "$TORCH_SPEC" peft==0.21.2; \
    fi \
 && /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && /opt/venv/bin/python -m compileall -q -x '/tests?/|/testing/' /app /opt/venv/lib \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/loragate \
      --shell /usr/sbin/nologin loragate \
 && mkdir -p /rootfs/var/lib/loragate /rootfs/tmp \
 && chown 10001:10001 /rootfs/var/lib/loragate \
 && chmod 1777 /rootfs/tmp

FROM ${BASE}
COPY --from=build /etc/passwd /etc/group /etc/
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build /rootfs/ /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/var/lib/loragate \
    LORAGATE_HOST=0.0.0.0 LORAGATE_PORT=8080 LORAGATE_DATA_DIR=/var/lib/loragate
WORKDIR /var/lib/loragate
# Everything the gateway writes (database file when SQLite, record spool, adapter store and
# imports) lies under the data dir; mount a volume there and a tmpfs on /tmp, and the root
# filesystem can be read-only.
VOLUME ["/var/lib/loragate"]
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LORAGATE_PORT', '8080'), timeout=4)"]
LABEL org.opencontainers.image.title="loragate" \
      org.opencontainers.image.description="Inference gateway for fine-tuned models (LoRA on vLLM)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["loragate"]
CMD ["serve"]
