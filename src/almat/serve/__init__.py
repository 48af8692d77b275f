"""``almat serve``: a live, read-only view of every campaign in the browser (Starlette + Jinja2; the
figures are SVG drawn by ``static/almat.js`` from the stored values). See ``docs/serve.md``."""

from almat.serve.app import LOCAL_HOSTS, StoreUnavailable, bind, create_app, serve
