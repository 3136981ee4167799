# context-lookups: the precompute job and the web explorer, CPU-only, installed from a wheel.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
# The build follows the symlinks app/templates, app/static and precompute/migrations, so the
# wheel carries the templates, static files and migrations inside the packages.
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/data/hf-cache
# torch first, from the CPU wheel index, so that the install does not pull a CUDA build; then the
# wheel with every dependency at its locked version.
COPY requirements.lock /tmp/requirements.lock
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=wheel /dist/ /tmp/dist/
RUN whl=$(ls /tmp/dist/context_lookups-*.whl) \
    && pip install -c /tmp/requirements.lock "${whl}[postgres]" \
    && rm -rf /tmp/dist \
    && useradd --create-home --uid 10001 lookups \
    && mkdir -p /data && chown lookups /data
USER lookups
WORKDIR /data

EXPOSE 8000
CMD ["lookups", "serve", "--host", "0.0.0.0", "--port", "8000"]
