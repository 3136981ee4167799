"""HTTP routes: ``pages`` (HTML pages and their ``.json`` twins), ``fragments`` (htmx
fragments) and ``docs`` (the self-hosted OpenAPI UI)."""
