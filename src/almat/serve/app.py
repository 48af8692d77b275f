"""``almat serve``: a read-only Starlette app over the campaign store.

Pages are rendered on the server (Jinja2); ``static/almat.js`` draws the figures as SVG from the
values the page carries and polls a stamp: when it moves, it fetches the page's live part again and
swaps it in (no reload). Every store access runs on one worker thread (SQLite connections stay on
their thread, and requests never interleave on a connection). Nothing here writes to the store. The
report download's parity figure is the last committee's, loaded once per iteration (``serve.parity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.middleware import Middleware
from starlette.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from almat.export import export_labels
from almat.launch.launchpad import launchpad_from_spec, launchpad_host, load_launchpad_spec
from almat.query import MixedOraclesError
from almat.report import write_report
from almat.schemas.section import ConfigError
from almat.serve import data
from almat.serve.parity import ParityCache
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB, check_connection

HERE = Path(__file__).parent
#: what the page hands to almat.js to draw
CHART_KEYS = ("kind", "learning_curve", "deviation", "calibration", "calibration_points", "force_tolerance",
              "conv_accuracy", "pool_curve", "target_force_rmse", "nft_boxes", "stop_delta", "cost")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class StoreUnavailable(RuntimeError):
    """The store cannot be read (MongoDB unreachable, no embedded store yet); the message is safe to show."""


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        return "∞" if value in (float("inf"), float("-inf")) else format(value, spec)
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _cell(value: Any, style: str = "") -> Any:
    """A table cell in the style a kind's ``page_columns`` give it: pct, fmt, fmt3 (3 digits), or as it is."""
    if style == "pct":
        return _pct(value)
    if style in ("fmt", "fmt3"):
        return _fmt(value, ".3g" if style == "fmt3" else ".4g")
    return value


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters.update(fmt=_fmt, pct=_pct, cell=_cell, q=lambda s: quote(str(s), safe=""),
                       short_id=lambda s: str(s or "")[:8])
    env.filters["chart_data"] = lambda c: data.clean({k: c.get(k) for k in CHART_KEYS})
    return env


class Backend:
    """The store (and the LaunchPad), opened lazily on the DB thread; reopened after a failure."""

    def __init__(self, settings: AlmatSettings, launchpad: str | Path | None = None):
        self.settings = settings
        self.launchpad_file = Path(launchpad) if launchpad else (
            Path(os.environ["LAUNCHPAD_LOC"]) if os.environ.get("LAUNCHPAD_LOC") else None)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="almat-serve-db")
        self._db = None
        self._lp = None

    def _open(self):
        s = self.settings
        if s.embedded and not s.db_path.exists():  # never create a store by looking at it
            raise StoreUnavailable(f"no embedded store at {s.db_path.resolve()} (set ALMAT_DB_PATH or "
                                   "ALMAT_MONGO_URI)")
        try:
            check_connection(s)
            return CampaignDB.from_settings(s).connect()
        except ConnectionError as exc:
            raise StoreUnavailable(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - never echo a URI: name the host only
            raise StoreUnavailable(f"cannot open {s.describe()} ({type(exc).__name__})") from None

    def _call(self, fn: Callable, *args):
        if self._db is None:
            self._db = self._open()
        try:
            return fn(self._db, *args)
        except data.NotFound:
            raise
        except Exception as exc:
            if self.settings.embedded:
                raise
            self.close_db()  # MongoDB went away: say so, reconnect on the next request
            raise StoreUnavailable(f"cannot read MongoDB at {self.settings.mongo_host} "
                                   f"({type(exc).__name__})") from None

    async def run(self, fn: Callable, *args):
        """``fn(db, *args)`` on the DB thread."""
        return await self.run_plain(self._call, fn, *args)

    async def run_plain(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the FireWorks LaunchPad -----------------------------------------------------------------

    def _queue(self, _db, name: str) -> dict[str, Any]:
        try:
            spec = load_launchpad_spec(self.launchpad_file)
        except ConfigError as exc:  # names the file and what is wrong, never a value from it
            return {"error": f"cannot read the LaunchPad file: {exc}"}
        host = launchpad_host(spec)
        try:
            if self._lp is None:
                self._lp = launchpad_from_spec(spec, timeout_ms=3000)
            return {"host": host, **data.queue(self._lp, name)}
        except Exception as exc:  # noqa: BLE001 - the page says so and the server keeps running
            self._lp = None
            return {"host": host, "error": f"cannot read the LaunchPad at {host} ({type(exc).__name__})"}

    async def queue(self, name: str) -> dict[str, Any] | None:
        if self.launchpad_file is None:
            return None
        return await self.run(self._queue, name)


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "campaign"


def _export(db, name: str, out: Path, fingerprint: str | None) -> Path:
    """The campaign's ok labels as extxyz in ``out``."""
    path = out / f"{_safe_filename(name)}.extxyz"
    export_labels(db, path, fmt="extxyz", campaign=data.campaign_doc(db, name)["name"], status="ok",
                  oracle_fingerprint=fingerprint or None)
    return path


def _report(db, name: str, out: Path, parity: tuple[dict, list[str]]) -> Path:
    """The campaign's report page in ``out``, with the parity values given (``ParityCache``)."""
    data.campaign_doc(db, name)
    html = write_report(db, name, out, parity=parity).files["html"]
    return html.rename(out / f"report-{_safe_filename(name)}.html")


def _filters(request: Request) -> tuple[str | None, str | None]:
    q = request.query_params
    return q.get("chemsys") or None, q.get("status") or None


def _partial(request: Request) -> bool:
    return request.query_params.get("partial") == "1"


def _with_stamp(name: str | None, fn: Callable, *args):
    """The stamp first, then the page's data: a change in between shows on the next poll."""
    return lambda db: (data.stamp(db, name), fn(db, *args))


class _Pages:
    """The app's pages and JSON endpoints over one :class:`Backend`."""

    def __init__(self, settings: AlmatSettings, backend: Backend, refresh_s: float):
        self.settings, self.backend, self.refresh_s = settings, backend, refresh_s
        self.env = _templates()
        self.parity = ParityCache(backend)

    def page(self, template: str, status_code: int = 200, **ctx) -> HTMLResponse:
        ctx.update(where=self.settings.describe(), refresh_ms=int(self.refresh_s * 1000))
        return HTMLResponse(self.env.get_template(template).render(**ctx), status_code=status_code)

    def unavailable(self, exc: StoreUnavailable, partial: bool = False) -> HTMLResponse:
        """503, naming the host; the page polls the stamp and reloads once the store answers."""
        return self.page("_error_body.html" if partial else "error.html", 503, message=str(exc), code=503,
                         title="store unavailable", stamp_url="/api/stamp", recover="reload")

    def not_found(self, exc: data.NotFound) -> HTMLResponse:
        return self.page("404.html", 404, missing=exc.name, names=exc.names, title="no such campaign")

    async def index(self, request: Request):
        try:
            stamp, listing = await self.backend.run(_with_stamp(None, data.campaign_list, *_filters(request)))
        except StoreUnavailable as exc:
            return self.unavailable(exc, _partial(request))
        query = urlencode({k: v for k, v in listing["filters"].items() if v} | {"partial": "1"})
        return self.page("_list_body.html" if _partial(request) else "list.html", title="campaigns", stamp=stamp,
                         stamp_url="/api/stamp", body_url=f"/?{query}", **listing)

    async def campaign(self, request: Request):
        name = request.path_params["name"]
        try:
            stamp, detail = await self.backend.run(_with_stamp(name, data.campaign_detail, name))
        except data.NotFound as exc:
            return self.not_found(exc)
        except StoreUnavailable as exc:
            return self.unavailable(exc, _partial(request))
        base = f"/campaigns/{quote(name, safe='')}"
        return self.page("_campaign_body.html" if _partial(request) else "campaign.html", title=name, c=detail,
                         queue=await self.backend.queue(name), stamp=stamp, base=base,
                         stamp_url=f"/api/stamp?campaign={quote(name, safe='')}", body_url=f"{base}?partial=1")

    async def api_list(self, request: Request):
        try:
            return JSONResponse(data.clean(await self.backend.run(data.campaign_list, *_filters(request))))
        except StoreUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def api_campaign(self, request: Request):
        name = request.path_params["name"]
        try:
            detail = await self.backend.run(data.campaign_detail, name)
        except data.NotFound as exc:
            return JSONResponse({"error": f"no campaign {exc.name!r}", "campaigns": exc.names}, status_code=404)
        except StoreUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        detail["queue"] = await self.backend.queue(name)
        return JSONResponse(data.clean(detail))

    async def api_stamp(self, request: Request):
        name = request.query_params.get("campaign")
        try:
            return JSONResponse({"stamp": await self.backend.run(data.stamp, name)})
        except data.NotFound as exc:
            return JSONResponse({"error": f"no campaign {exc.name!r}"}, status_code=404)
        except StoreUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    async def download(self, request: Request, make: Callable, media_type: str):
        """``await make(name, folder)`` writes the file into a temporary folder; sent as an attachment, then
        removed."""
        name = request.path_params["name"]
        tmp = Path(tempfile.mkdtemp(prefix="almat-serve-"))
        try:
            path = await make(name, tmp)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, data.NotFound):
                return self.not_found(exc)
            if isinstance(exc, StoreUnavailable):
                return self.unavailable(exc)
            if isinstance(exc, MixedOraclesError):
                fps = (await self.backend.run(data.labels_summary, name))["fingerprints"]
                return self.page("error.html", 409, message=str(exc), title="mixed oracles",
                                 links=[(f"{request.url.path}?oracle_fingerprint={quote(fp, safe='')}", fp)
                                        for fp in fps])
            raise
        return FileResponse(path, media_type=media_type, filename=path.name,
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))

    async def labels_xyz(self, request: Request):
        fingerprint = request.query_params.get("oracle_fingerprint")
        return await self.download(request, lambda name, tmp: self.backend.run(_export, name, tmp, fingerprint),
                                   "chemical/x-extxyz")

    async def _write_report(self, name: str, tmp: Path) -> Path:
        parity = await self.parity.get(name)  # the last committee's, loaded once (torch off the DB thread)
        return await self.backend.run(_report, name, tmp, parity)

    async def report(self, request: Request):
        return await self.download(request, self._write_report, "text/html")

    async def missing(self, request: Request, exc):
        path = request.url.path
        if path.startswith("/api/"):
            return JSONResponse({"error": f"nothing at {path}"}, status_code=404)
        return self.page("404.html", 404, missing=None, names=None, title="not found", path=path)

    def routes(self) -> list:
        return [
            Route("/", self.index),
            # {name:path}: a stored name may hold a slash; the downloads come first
            Route("/campaigns/{name:path}/labels.extxyz", self.labels_xyz),
            Route("/campaigns/{name:path}/report.html", self.report),
            Route("/campaigns/{name:path}", self.campaign),
            Route("/api/campaigns", self.api_list),
            Route("/api/campaigns/{name:path}", self.api_campaign),
            Route("/api/stamp", self.api_stamp),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]


def create_app(settings: AlmatSettings | None = None, launchpad: str | Path | None = None,
               refresh_s: float = 2.0) -> Starlette:
    """The app. ``launchpad``: a FireWorks LaunchPad file (default: ``$LAUNCHPAD_LOC``; none: no queue)."""
    settings = settings or get_settings()
    backend = Backend(settings, launchpad)
    pages = _Pages(settings, backend, refresh_s)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await backend.run_plain(backend.close_db)
        pages.parity.close()

    app = Starlette(routes=pages.routes(), exception_handlers={404: pages.missing}, lifespan=lifespan,
                    middleware=[Middleware(_SecurityHeaders)])
    app.state.backend, app.state.parity = backend, pages.parity
    return app


class _SecurityHeaders:
    """No inline scripts, no framing, no caching, no sniffing: on every response."""

    HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
               (b"x-frame-options", b"DENY")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``OSError`` with a one-line message when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48, 10048):  # EADDRINUSE (Linux, macOS, Windows)
            raise OSError(f"port {port} on {host} is already in use (another almat serve?); pick one with "
                          "--port") from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def serve(app: Starlette, sock: socket.socket, log_level: str = "warning") -> None:
    """Run ``app`` on an already bound socket until interrupted."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False))
    server.run(sockets=[sock])
