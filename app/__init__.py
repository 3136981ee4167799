"""The web layer of context-lookups (FastAPI + Jinja2 + htmx). Imports `precompute`, never the
reverse."""
