# context-lookups: the precompute job and the web explorer, CPU-only.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/data/hf-cache

WORKDIR /srv/context-lookups

# torch first, from the CPU wheel index, so that `pip install .` does not pull a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . .
# Installed from the source tree (editable): precompute/db.py finds alembic.ini and alembic/
# next to the package, and the server its templates/ and static/ (app/settings.py).
RUN pip install -e . \
    && useradd --create-home --uid 10001 lookups \
    && mkdir -p /data && chown lookups /data
USER lookups

EXPOSE 8000
CMD ["lookups", "serve", "--db", "sqlite:////data/lookups.db", "--host", "0.0.0.0", "--port", "8000"]
