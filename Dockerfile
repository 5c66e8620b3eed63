# The gateway (no engine): point it at vLLM replicas with LORAGATE_ENGINES. peft (with the CPU
# build of torch) is only used by the short-lived worker that checks adapters at registration.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY adapters ./adapters
COPY rollout ./rollout
COPY monitoring ./monitoring
COPY alembic ./alembic
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -e . peft==0.21.2 \
 && useradd --create-home loragate
USER loragate
ENV LORAGATE_HOST=0.0.0.0 LORAGATE_PORT=8080 LORAGATE_DATA_DIR=/home/loragate/data
EXPOSE 8080
HEALTHCHECK CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
# Run `loragate db upgrade` once per database (e.g. as a Helm pre-install job) before serving.
CMD ["loragate", "serve"]
