# One image for every tradeloop service; pick the service with the command, e.g.
#   docker run --rm tradeloop python -m services.registry
# docker-compose.yml runs migrate, ingest, trainer, registry and inference from this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first (own layer, cached until the requirements change). requirements.lock when it
# exists, else requirements.in. torch==2.13.0 comes from PyTorch's CPU-only index (no CUDA wheels):
# for `torch==2.13.0` pip prefers the CPU index's 2.13.0+cpu over PyPI's CUDA build.
COPY requirements.* ./
RUN set -eux; \
    if [ -f requirements.lock ]; then req=requirements.lock; else req=requirements.in; fi; \
    pip install --extra-index-url https://download.pytorch.org/whl/cpu -r "$req"; \
    python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert not torch.version.cuda, 'CUDA build of torch installed'"

# The project itself (its dependencies are already installed above).
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Non-root user; /data (TRADELOOP_DATA_DIR) and /data/artifacts (shared artifact volume) belong to it,
# so a fresh named volume mounted there is writable.
RUN set -eux; \
    groupadd --system --gid 10001 tradeloop; \
    useradd --system --uid 10001 --gid tradeloop --home-dir /home/tradeloop --create-home tradeloop; \
    mkdir -p /data/artifacts; \
    chown -R tradeloop:tradeloop /data
USER tradeloop:tradeloop

ENV TRADELOOP_DATA_DIR=/data \
    TRADELOOP_HTTP_HOST=0.0.0.0 \
    TRADELOOP_LOG_JSON=true

# registry 8000, ingest 8001, trainer 8002, inference 8003 (health, metrics, APIs)
EXPOSE 8000 8001 8002 8003

CMD ["tradeloop", "--help"]
