"""``almat`` command line: run campaigns and see where they stand."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Optional

import click
import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from almat.campaign import load_config
from almat.campaign.kinds import CampaignKind, kind_of
from almat.enumeration.cli import enumerate_file, parse_occupancy
from almat.export import LabelImportError, export_command, import_command
from almat.launch.state import campaign_state  # a submitted campaign: judged with its LaunchPad
from almat.learner.settings import uncertainty_label
from almat.oracle.calculators import CalculatorSpecError
from almat.query import MixedOraclesError, UnknownFilterError
from almat.report import report_command
from almat.schemas.section import ConfigError, format_validation_error
from almat.serve import LOCAL_HOSTS, bind, create_app, serve
from almat.settings import get_settings
from almat.stores import CampaignDB, StoreError, check_connection, migrate_montydb
from almat.stores.ledger import campaign_cost

# no OMP_WAIT_POLICY here: each torch job takes the cores that are free when it starts (almat.threads)
console = Console(log_path=False)
err_console = Console(stderr=True)


def one_line(exc: BaseException) -> str:
    """An exception as one line with its cause: the message's last line, with the type where the message
    alone would not say what happened (``OSError``s: disk full, read-only, ...)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} {exc.filename}" if exc.filename else exc.strerror
    lines = str(exc).strip().splitlines()
    text = lines[-1] if lines else ""
    if text and isinstance(exc, (ValueError, ConnectionError, RuntimeError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Commands(TyperGroup):
    """Every command ends with a one-line error, naming the cause, instead of a traceback
    (``ALMAT_TRACEBACK=1`` shows the traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort,
                KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("ALMAT_TRACEBACK"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(one_line(exc))}", soft_wrap=True, highlight=False)
            raise typer.Exit(code=1) from None


app = typer.Typer(
    name="almat",
    help="Active learning for materials: MLIP campaigns on jobflow/atomate2.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Commands,
)


class _ProgressHandler(logging.Handler):
    """Progress lines update a spinner; everything else is printed as a log line."""

    def __init__(self, status) -> None:
        super().__init__(level=logging.INFO)
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if getattr(record, "almat_progress", False):
                self.status.update(f"[bold cyan]{msg}")
            else:
                style = "yellow" if record.levelno >= logging.WARNING else None
                console.log(msg, style=style)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _quiet_third_party(verbose: bool) -> None:
    """mace prints "cuequivariance or cuequivariance_torch is not available ..." on its first import: import
    it here with stdout captured, so only -v shows it."""
    if verbose or "mace.tools.cg" in sys.modules:
        return
    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e3nn's torch.load warning
        try:
            import mace.modules  # noqa: F401 - mace before e3nn, as almat.learner.mace imports them
        except Exception:  # noqa: BLE001 - a broken mace fails later, where it is used, with its message
            pass


@contextmanager
def _progress(verbose: bool):
    """almat's log as a spinner (progress lines) and log lines; jobflow's and maggma's only with -v."""
    _quiet_third_party(verbose)
    logger = logging.getLogger("almat")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for name in ("jobflow", "maggma"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    with console.status("[bold cyan]starting", spinner="dots") as status:
        handler = _ProgressHandler(status)
        logger.addHandler(handler)
        try:
            yield status
        finally:
            logger.removeHandler(handler)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def _db(settings):
    check_connection(settings)
    return CampaignDB.from_settings(settings).connect()


def _settings():
    try:
        return get_settings()
    except ValidationError as exc:  # (never the values: a URI holds a password)
        _fail(format_validation_error(exc, "settings"))
    except Exception as exc:  # noqa: BLE001 - a bad settings file is a one-line error
        _fail(f"settings: {one_line(exc)}")


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


@app.command()
def run(
    campaign_file: Path = typer.Argument(..., help="Campaign YAML file (kind: md, pool or nft)"),
    resume: bool = typer.Option(False, "--resume", help="Continue a campaign of the same name and config"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show jobflow's log"),
) -> None:
    """Run a campaign locally (jobflow run_locally) with a progress display."""
    # the loop imports torch: only here, so that the other commands start without it
    from almat.campaign.runner import CampaignConvergedError, CampaignExistsError, run_campaign

    warnings.filterwarnings("ignore")  # e3nn/torch warnings drown the progress display
    signal.signal(signal.SIGTERM, _terminated)  # (SLURM's time limit): end like Ctrl-C, recording why
    settings = _settings()
    try:
        config = load_config(campaign_file)
    except ConfigError as exc:
        _fail(str(exc))
    console.print(f"[bold]{config.kind} campaign[/] {config.name}  [dim]data: {settings.describe()}[/]")
    converged = None
    with _progress(verbose):
        try:
            result = run_campaign(config, settings, resume=resume, verbose=verbose)
        except CampaignConvergedError as exc:
            converged = str(exc)
        except (CampaignExistsError, CalculatorSpecError, ConfigError, ConnectionError, RuntimeError,
                ValueError) as exc:
            _fail(str(exc))
    if converged is not None:
        console.print(f"[green]{converged}[/]")
        status_cmd(config.name, as_json=False)
        return
    console.print(_table(kind_of(config), config.name, [r.model_dump(mode="json") for r in result.iterations]))
    c = result.campaign
    console.print(f"[bold green]{c.status.value}[/] after {c.n_iterations} iteration(s), {c.n_labels} labels, "
                  f"{result.wall_time:.0f} s: {c.stop_reason}")


#: columns whose values are text (left-aligned)
TEXT_COLUMNS = ("stop_reason", "acquisition", "stage")


def _cell(value, spec: str = ".4g") -> str:
    return "-" if value is None else (format(value, spec) if isinstance(value, float) else str(value))


def _fits(table: Table, width: int) -> bool:
    return Measurement.get(console, console.options.update_width(10_000), table).maximum <= width


def _table(kind: CampaignKind, name: str, records: list[dict]):
    """The per-iteration table of a campaign of any kind (its records as stored); on a narrow terminal
    short titles, the kind's legend, and the stop reasons below the table."""
    rows = [kind.status_row(r) for r in records]
    columns = [(k, t) for k, t in kind.columns if k not in kind.optional or any(r.get(k) is not None for r in rows)]
    table = Table(title=f"{kind.name} campaign {name}")
    for key, title in columns:
        table.add_column(title, justify="left" if key in TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[_cell(row[k]) for k, _ in columns])
    if _fits(table, console.width):
        return table
    columns = [(k, t) for k, t in columns if k != "stop_reason"]
    for pad in (1, 0):  # one space between the columns only when the table needs it to fit
        table = Table(title=f"{kind.name} campaign {name}", box=box.SIMPLE_HEAD, pad_edge=False,
                      padding=(0, pad, 0, 0))
        for key, title in columns:
            table.add_column(kind.short.get(key, title), justify="left" if key in TEXT_COLUMNS else "right",
                             no_wrap=True, max_width=10 if key == "stage" else None, overflow="ellipsis")
        for row in rows:
            table.add_row(*[_cell(row[k], ".3g") for k, _ in columns])
        if _fits(table, console.width):
            break
    stops = [Text(f"it {row['iteration']}: {row['stop_reason']}") for row in rows if row.get("stop_reason")]
    return Group(table, Text(kind.legend, style="dim"), *stops)


#: the cost table's columns: key of ``almat.stores.ledger.cost_summary``'s rows, title
COST_COLUMNS = (("labels", "labels"), ("oracle_core_h", "oracle"), ("training_core_h", "train"),
                ("training_gpu_h", "train GPU-h"), ("exploration_core_h", "explore"), ("other_core_h", "other"),
                ("total_core_h", "total"), ("core_h_per_label", "per label"))


def _hours(value) -> str:
    if value is None or isinstance(value, int):
        return _cell(value)
    return "0" if value == 0 else format(value, ".2e" if value < 0.01 else ".3g")


def _cost_table(name: str, cost: dict) -> Table:
    """The campaign's cost per iteration and in total (the ledger); the GPU column only where a job used one."""
    gpu = cost["total"]["training_gpu_h"] > 0
    columns = [(k, t) for k, t in COST_COLUMNS if gpu or k != "training_gpu_h"]
    table = Table(title=f"cost of {name}: core-hours (CPU time of each job's process tree)", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("it", justify="right")
    for _, title in columns:
        table.add_column(title, justify="right", no_wrap=True)
    for row in [*cost["iterations"], {**cost["total"], "iteration": "total"}]:
        it = row["iteration"]
        table.add_row("init" if it == -1 else "-" if it is None else str(it), *[_hours(row[k]) for k, _ in columns])
    return table


def _campaigns_table(rows: list[dict], where: str) -> Table:
    """All campaigns; on a narrow terminal the oracle and the date are shortened."""
    table = Table(title=f"campaigns in {where}")
    for col in ("name", "status", "iterations", "labels", "chemsys", "oracle", "updated"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["status"]), str(r["iterations"]), str(r["labels"]),
                      str(r["chemsys"]), str(r["oracle"]), r["updated_at"][:19])
    if _fits(table, console.width):
        return table
    table = Table(title=f"campaigns in {where}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", overflow="fold")
    for col in ("status", "its", "labels", "chemsys", "oracle", "updated"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("its", "labels") else "left")
    for r in rows:
        oracle = str(r["oracle"])  # ase:ase.calculators.emt.EMT -> ase:EMT
        if ":" in oracle:
            oracle = f"{oracle.split(':', 1)[0]}:{oracle.rsplit('.', 1)[-1]}"
        table.add_row(r["name"], str(r["status"]), str(r["iterations"]), str(r["labels"]), str(r["chemsys"]),
                      oracle, r["updated_at"][5:16].replace("T", " "))
    return table


@app.command("status")
def status_cmd(
    campaign: Optional[str] = typer.Argument(None, help="Campaign name; all campaigns when omitted"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts"),
) -> None:
    """Show campaigns, or the iterations of one campaign."""
    settings = _settings()
    try:
        db = _db(settings)
    except ConnectionError as exc:
        _fail(str(exc))
    try:
        if campaign is None:
            docs = sorted(db.campaigns.query({}), key=lambda d: str(d.get("created_at")))
            rows = [{
                "name": d["name"], "status": campaign_state(db, d)[0], "iterations": d.get("n_iterations", 0),
                "labels": d.get("n_labels", 0), "chemsys": d.get("chemsys"), "oracle": d.get("oracle"),
                "updated_at": str(d.get("updated_at")),
            } for d in docs]
            if as_json:
                sys.stdout.write(json.dumps(rows, indent=2) + "\n")
                return
            if not rows:
                console.print(f"no campaigns in {settings.describe()}")
                return
            console.print(_campaigns_table(rows, settings.describe()))
            return
        doc = db.campaigns.query_one({"name": campaign})
        if doc is None:
            names = sorted(d["name"] for d in db.campaigns.query({}, properties=["name"]))
            _fail(f"no campaign {campaign!r} in {settings.describe()}"
                  + (f"; known: {', '.join(names)}" if names else ""))
        kind = kind_of(doc)
        records = sorted(getattr(db, kind.records).query({"campaign": campaign}), key=lambda d: d["iteration"])
        state, why = campaign_state(db, doc)  # a running campaign whose process is gone is "killed"
        if as_json:
            rows = [kind.status_row(r) for r in records]
            out = {"name": campaign, "kind": kind.name, "status": state, "stop_reason": why,
                   "labels": doc.get("n_labels", 0), "iterations": rows, "cost": campaign_cost(db, campaign)}
            sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
            return
        console.print(_table(kind, campaign, records))
        cost = campaign_cost(db, campaign)
        if cost["entries"]:
            console.print(_cost_table(campaign, cost))
        console.print(f"status: [bold]{state}[/]  labels: {doc.get('n_labels', 0)}  "
                      f"uncertainty: {uncertainty_label(doc.get('config'))}" + (f"  ({escape(why)})" if why else ""))
    finally:
        db.close()


@app.command()
def submit(
    campaign_file: Path = typer.Argument(..., help="Campaign YAML file"),
    launchpad: Optional[Path] = typer.Option(None, "--launchpad", "-l",
                                             help="FireWorks my_launchpad.yaml (default: LAUNCHPAD_LOC or FireWorks' search)"),
    routing: Optional[Path] = typer.Option(None, "--routing", help="YAML: job kind -> worker category"),
    resume: bool = typer.Option(False, "--resume", help="Continue a campaign of the same name and config"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Do every check, add nothing"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts"),
) -> None:
    """Submit a campaign to a FireWorks LaunchPad; SLURM workers (qlaunch) run its jobs."""
    # building the flow imports the learners (torch): only here, so that the other commands start without it
    from almat.launch.submit import SubmitError, submit_campaign

    warnings.filterwarnings("ignore")
    logging.getLogger("almat.launch").addHandler(logging.NullHandler())  # warnings come back in the result
    try:
        result = submit_campaign(campaign_file, launchpad, routing, resume=resume, dry_run=dry_run).as_dict()
    except SubmitError as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    for w in result["warnings"]:
        err_console.print(f"[yellow]warning:[/] {w}")
    verb = "added" if result["submitted"] else "checked (dry run)"
    console.print(f"[bold]{result['campaign']}[/]: {result['n_fireworks']} fireworks {verb} on "
                  f"{result['launchpad']}; outputs go to {result['job_store']}")
    for cat, parts in result["partitions"].items():
        console.print(f"  category {cat}: partition(s) {', '.join(parts) or '-'}")


@app.command("enumerate")
def enumerate_cmd(
    structure_file: Path = typer.Argument(..., help="Disordered structure (CIF, POSCAR, ...)"),
    occupancy: list[str] = typer.Option([], "--occupancy", help="Set a partial occupancy, e.g. Li+=0.5 (repeatable)"),
    primitive: bool = typer.Option(False, "--primitive", help="Reduce to the primitive cell first"),
    max_structures: int = typer.Option(100, "--max-structures", min=1, help="How many structures to keep"),
    max_cell_size: int = typer.Option(1, "--max-cell-size", min=1, help="Largest supercell (in primitive cells)"),
    out_dir: Path = typer.Option(Path("enumerated"), "-o", "--out", help="Folder for the structures"),
    fmt: str = typer.Option("cif", "--format", help="cif or poscar"),
    backend: str = typer.Option("auto", "--backend", help="auto, icet or enumlib"),
    no_sort: bool = typer.Option(False, "--no-sort", help="No Ewald ranking (charged targets allowed)"),
) -> None:
    """Enumerate symmetry-distinct ordered structures, ranked by Ewald energy; one file each."""
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    try:
        paths = enumerate_file(structure_file, parse_occupancy(occupancy), primitive=primitive,
                               max_structures=max_structures, out_dir=out_dir, fmt=fmt, backend=backend,
                               max_cell_size=max_cell_size, sort=not no_sort)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    console.print(f"{len(paths)} structures written to {out_dir} ({time.perf_counter() - start:.1f} s)")


@app.command("export")
def export_cmd(
    out: Path = typer.Argument(..., help="Output file: .xyz/.extxyz (MACE training set), .db (ASE database) "
                                         "or .jsonl (every label field; what `almat import` reads)"),
    campaign: list[str] = typer.Option([], "--campaign", "-c", help="Campaign name (repeatable)"),
    chemsys: list[str] = typer.Option([], "--chemsys", help="Chemical system, e.g. Cu-Zr (repeatable)"),
    elements: list[str] = typer.Option([], "--elements", help="Labels containing these elements, e.g. Li-P"),
    formula: list[str] = typer.Option([], "--formula", help="Reduced formula (repeatable)"),
    iteration: list[int] = typer.Option([], "--iteration", help="Iteration (repeatable; -1: initial data)"),
    source: list[str] = typer.Option([], "--source", help="Structure source: init, perturbed, md, ... (repeatable)"),
    oracle_fingerprint: list[str] = typer.Option([], "--oracle-fingerprint", help="Oracle settings fingerprint"),
    fmt: Optional[str] = typer.Option(None, "--format", help="extxyz, ase-db or jsonl (default: from the suffix)"),
    include_failed: bool = typer.Option(False, "--include-failed", help="Also failed labels (jsonl only)"),
    allow_mixed_oracles: bool = typer.Option(False, "--allow-mixed-oracles",
                                             help="Allow labels of several oracle settings in one file"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file"),
) -> None:
    """Export labels: extxyz for MACE (REF_energy/REF_forces/REF_stress), an ASE database, or JSON lines."""
    try:
        res = export_command(out, fmt=fmt, force=force, campaign=campaign, chemsys=chemsys, elements=elements,
                             formula=formula, iteration=iteration, source=source,
                             oracle_fingerprint=oracle_fingerprint, status=None if include_failed else "ok",
                             allow_mixed_oracles=allow_mixed_oracles, settings=_settings())
    except (FileExistsError, MixedOraclesError, UnknownFilterError, ValueError, ConnectionError) as exc:
        _fail(str(exc))
    console.print(f"{res['n_labels']} labels written to {res['path']} ({res['format']})")


@app.command("export-model")
def export_model_cmd(
    name: str = typer.Argument(..., help="Campaign name"),
    out: Path = typer.Option(..., "--output", "-o", help="Output file (DeePMD: .pb; MACE: .model)"),
    model_id: Optional[str] = typer.Option(None, "--model", help="Model id (default: the production model "
                                                                   "of finish:, else the latest committee's first member)"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file"),
) -> None:
    """Write a stored model for use outside almat: the production model's .model (finish:), DeePMD's frozen graph
    for LAMMPS' pair_style deepmd, a MACE member as a .model."""
    # reading a model imports its learner (torch, deepmd): only here, so that the other commands start without it
    from almat.export.model import export_model

    settings = _settings()
    try:
        with _db(settings) as db:
            res = export_model(db, name, out, model_id=model_id, force=force)
    except (FileExistsError, ValueError, ConnectionError, StoreError) as exc:
        _fail(one_line(exc))
    what = ("production model" if res["role"] == "production"
            else f"iteration {res['iteration']}, member {res['committee_index']}")
    console.print(f"model {res['model_id']} ({what}, "
                  f"{res['architecture']}) written to {res['path']}: {res['format']}, {res['bytes']} bytes")


@app.command("import")
def import_cmd(
    path: Path = typer.Argument(..., help="A .jsonl file written by `almat export`"),
    replace: bool = typer.Option(False, "--replace", help="Overwrite labels that are already stored"),
) -> None:
    """Import labels from a JSON-lines export: validated as a whole, all or nothing."""
    if not path.is_file():
        _fail(f"no file {path}")
    try:
        res = import_command(path, settings=_settings(), replace=replace)
    except (LabelImportError, ConnectionError) as exc:
        _fail(str(exc))
    console.print(f"{res['n_new']} labels imported from {path}; of {res['n_labels']}, "
                  + (f"{res['n_replaced']} already stored were replaced" if replace else
                     f"{res['n_skipped']} already stored were skipped (--replace overwrites them)"))


@app.command("migrate-store")
def migrate_store_cmd(
    path: Optional[Path] = typer.Argument(None, help="Store folder (default: ALMAT_DB_PATH, ./almat_db)"),
) -> None:
    """Copy an embedded store of an earlier almat version (montydb) into the SQLite store in the same folder."""
    try:
        copied = migrate_montydb(path or _settings().db_path)
    except StoreError as exc:
        _fail(str(exc))
    for name, n in copied.items():
        console.print(f"{name}: {n} documents")
    console.print(f"migrated {sum(copied.values())} documents; the montydb files were left as they were")


db_app = typer.Typer(help="The store itself: almat db init creates its indexes.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("init")
def db_init_cmd() -> None:
    """Create the store's indexes (a write: run it as a user who may write; run, submit and import do it too)."""
    settings = _settings()
    db = _db(settings)
    try:
        created = db.ensure_indexes()
    finally:
        db.close()
    console.print(f"indexes ready: {sum(map(len, created.values()))} fields of {len(created)} collections in "
                  f"{settings.describe()}")


@app.command("report")
def report_cmd(
    campaign: str = typer.Argument(..., help="Campaign name"),
    out_dir: Path = typer.Option(Path("report"), "-o", "--out", help="Folder for report.html and the PNGs"),
) -> None:
    """Write a campaign report: learning curve, model deviation, parity, labels per source (PNG + HTML)."""
    warnings.filterwarnings("ignore")
    _quiet_third_party(False)  # the parity figure loads the committees (mace)
    try:
        res = report_command(campaign, out_dir, settings=_settings())
    except (ValueError, ConnectionError) as exc:
        _fail(str(exc))
    for note in res["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"report written to {res['html']} ({len(res['figures'])} figures)")


@app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (anything but localhost is "
                                                          "reachable by others: a warning)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on"),
    launchpad: Optional[Path] = typer.Option(None, "--launchpad", "-l",
                                             help="FireWorks my_launchpad.yaml: show the queue (default: LAUNCHPAD_LOC)"),
    refresh: float = typer.Option(2.0, "--refresh", min=0.2, help="Seconds between the pages' checks for news"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request"),
) -> None:
    """Serve a live, read-only view of every campaign in the store in the browser."""
    settings = _settings()
    if launchpad is not None and not launchpad.is_file():
        _fail(f"no LaunchPad file {launchpad}")
    try:
        sock = bind(host, port)
    except OSError as exc:
        _fail(str(exc))
    if host not in LOCAL_HOSTS:
        err_console.print(f"[yellow]warning:[/] listening on {host}, not 127.0.0.1: anyone who can reach this "
                          "machine can read every campaign (there is no login)", soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"almat serve: http://{shown}:{sock.getsockname()[1]}/  [dim]data: {settings.describe()}; "
                  "Ctrl-C stops[/]", soft_wrap=True)
    serve(create_app(settings, launchpad=launchpad, refresh_s=refresh), sock,
          log_level="info" if verbose else "warning")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
