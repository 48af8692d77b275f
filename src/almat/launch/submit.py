"""Submit a campaign to a FireWorks LaunchPad, each job routed to a worker category.

``submit_campaign`` checks everything it can before it adds anything:

1. the campaign config and the routing;
2. the LaunchPad file (explicit path, else ``$LAUNCHPAD_LOC``, else FireWorks' own search:
   ``FW_CONFIG_FILE``/``CONFIG_FILE_DIR``, the current folder, ``~/.fireworks``);
3. the fworker and qadapter files (by default the ``my_fworker*.yaml``/``my_qadapter*.yaml`` next to
   the LaunchPad file): a SLURM qadapter without a partition is an error; a routed category that no
   fworker pulls is a warning (those jobs would wait for ever);
4. the LaunchPad's MongoDB answers within ``timeout_ms`` (the error names the host, never the
   credentials), and holds no live job of the campaign (READY, RESERVED, RUNNING or WAITING): a second
   submit, ``--resume`` included, is refused naming them;
5. the JobStore the workers will write to (jobflow's ``JOB_STORE`` from ``JOBFLOW_CONFIG_FILE`` or
   ``~/.jobflow.yaml``; almat's settings store when there is no jobflow config): when reachable, a
   campaign of the same name is refused as ``almat run`` does.

Then it builds the campaign flow, routes it (``almat.launch.routing``), tags every job with the campaign's
name (``metadata.almat_campaign``, passed on to the jobs added at run time: their heartbeat, see
``almat.stores.heartbeat``), converts it with jobflow's ``flow_to_workflow`` (without a store: each worker
uses its own jobflow ``JOB_STORE``) and adds it.
"""

from __future__ import annotations

import glob
import logging
import os
import shlex
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from almat.campaign import CampaignMaker
from almat.campaign.runner import CampaignExistsError, build_flow
from almat.launch.launchpad import launchpad_from_spec, launchpad_host, load_launchpad_spec
from almat.launch.routing import Routing, RoutingError, apply_routing, load_routing
from almat.launch.state import describe_live, live_jobs
from almat.oracle.registry import check_oracle
from almat.schemas.section import ConfigError, load_yaml
from almat.settings import get_settings
from almat.stores import CampaignDB, ReadOnlyStoreError, build_job_store
from almat.stores.heartbeat import CAMPAIGN_KEY

logger = logging.getLogger(__name__)


class SubmitError(RuntimeError):
    """The campaign cannot be submitted; the message says why. Nothing was added."""


class LaunchPadError(SubmitError):
    """The LaunchPad file is missing or invalid, or its MongoDB cannot be reached."""


# --------------------------------------------------------------------------- LaunchPad


def find_launchpad_file(launchpad_file: str | Path | None = None) -> Path:
    """The LaunchPad file: ``launchpad_file``, else ``$LAUNCHPAD_LOC``, else FireWorks' search."""
    if launchpad_file is not None:
        path = Path(launchpad_file).expanduser()
        origin = "given"
    elif os.environ.get("LAUNCHPAD_LOC"):
        path = Path(os.environ["LAUNCHPAD_LOC"]).expanduser()
        origin = "LAUNCHPAD_LOC"
    else:
        from fireworks import fw_config

        if not fw_config.LAUNCHPAD_LOC:
            raise LaunchPadError(
                "no LaunchPad file: pass one (my_launchpad.yaml), set LAUNCHPAD_LOC, or put my_launchpad.yaml "
                f"in FireWorks' CONFIG_FILE_DIR ({fw_config.CONFIG_FILE_DIR}), the current folder or ~/.fireworks"
            )
        path = Path(fw_config.LAUNCHPAD_LOC)
        origin = "FireWorks config"
    if not path.is_file():
        raise LaunchPadError(f"LaunchPad file not found ({origin}): {path}")
    if not os.access(path, os.R_OK):
        raise LaunchPadError(f"LaunchPad file is not readable: {path}")
    return path


def _read_yaml(path: Path, what: str, error=SubmitError) -> dict:
    try:
        return load_yaml(path, what, empty={})
    except ConfigError as exc:
        raise error(str(exc)) from None


def _mongomock_file() -> str | None:
    from fireworks import fw_config

    return fw_config.MONGOMOCK_SERVERSTORE_FILE or None


def _mongomock_host(mock: str) -> str:
    """FireWorks' mongomock mode: create its file when missing; the name for messages."""
    if not Path(mock).exists():
        Path(mock).parent.mkdir(parents=True, exist_ok=True)
        Path(mock).write_text("{}")
        logger.info("created the mongomock LaunchPad file %s", mock)
    return f"mongomock file {mock}"


def _initialise(lp, host: str, ping: bool) -> None:
    """Ping the server; give an empty database FireWorks' id counters (what ``lpad reset`` does)."""
    if ping:
        lp.connection.admin.command("ping")
    if lp.fw_id_assigner.find_one({}) is not None:
        return
    if lp.fireworks.count_documents({}) or lp.workflows.count_documents({}):
        raise LaunchPadError(f"the LaunchPad at {host} has fireworks but no id counter; run `lpad reset`")
    lp._restart_ids(1, 1)
    logger.info("initialised the empty LaunchPad database %s at %s", lp.name, host)


def load_launchpad(launchpad_file: str | Path | None = None, timeout_ms: int = 5000):
    """A connected, initialised ``LaunchPad``; fails within about ``timeout_ms`` naming the host.

    In FireWorks' mongomock mode (``MONGOMOCK_SERVERSTORE_FILE``) the file is created when missing.
    An empty database (never reset) gets FireWorks' id counters, which ``lpad reset`` would create.
    """
    from pymongo.errors import OperationFailure, PyMongoError

    path = find_launchpad_file(launchpad_file)
    try:
        spec = load_launchpad_spec(path)
    except ConfigError as exc:
        raise LaunchPadError(str(exc)) from None
    if not spec.get("host") and not spec.get("uri_mode"):
        logger.info("LaunchPad file %s names no host: using localhost:27017", path)
    mock = _mongomock_file()
    host = _mongomock_host(mock) if mock else launchpad_host(spec)
    try:
        lp = launchpad_from_spec(spec, timeout_ms)
    except Exception as exc:  # noqa: BLE001 - a bad option in the file
        raise LaunchPadError(f"LaunchPad file {path}: {type(exc).__name__}: {exc}") from None
    try:
        _initialise(lp, host, ping=not mock)
    except OperationFailure as exc:
        raise LaunchPadError(
            f"the MongoDB of the LaunchPad at {host} refused access ({exc.code}): check username, password and "
            f"authsource in {path}"
        ) from None
    except PyMongoError as exc:
        raise LaunchPadError(
            f"cannot reach the LaunchPad's MongoDB at {host} within {timeout_ms / 1000:g} s "
            f"({type(exc).__name__}); check host/port in {path} and that the server is up"
        ) from None
    lp.almat_host = host  # for messages
    lp.almat_file = str(path)
    return lp


# --------------------------------------------------------------------------- workers


@dataclass
class FWorkerInfo:
    path: str
    name: str
    categories: list[str]  # empty: pulls any job

    def handles(self, category: str) -> bool:
        if not self.categories:
            return True
        if self.categories == ["__none__"]:
            return False
        return category in self.categories


@dataclass
class QAdapterInfo:
    path: str
    q_type: str | None
    partition: str | None
    fworker_file: str | None  # the -w of rocket_launch
    rocket_launch: str | None
    settings: dict = field(default_factory=dict)


def read_fworker(path: str | Path) -> FWorkerInfo:
    path = Path(path).expanduser()
    if not path.is_file():
        raise SubmitError(f"fworker file not found: {path}")
    data = _read_yaml(path, "fworker file")
    category = data.get("category") or []
    categories = [category] if isinstance(category, str) else [str(c) for c in category]
    return FWorkerInfo(str(path), str(data.get("name", path.stem)), categories)


def _fworker_arg(rocket_launch: str) -> str | None:
    try:
        words = shlex.split(rocket_launch)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w in ("-w", "--fworker_file") and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--fworker_file="):
            return w.split("=", 1)[1]
    return None


def read_qadapter(path: str | Path) -> QAdapterInfo:
    """Read a qadapter file; a SLURM one without a partition (``queue``) is an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SubmitError(f"qadapter file not found: {path}")
    data = _read_yaml(path, "qadapter file")
    q_type = data.get("_fw_q_type")
    partition = data.get("queue")
    if q_type == "SLURM" and not partition:
        hint = (" (FireWorks' SLURM template takes the partition from 'queue', not 'partition')"
                if data.get("partition") else "")
        raise SubmitError(f"qadapter {path} has no partition: set 'queue: <partition>'{hint}")
    rocket_launch = data.get("rocket_launch")
    if not rocket_launch:
        raise SubmitError(f"qadapter {path} has no rocket_launch (e.g. 'rlaunch -w my_fworker_cpu.yaml singleshot')")
    return QAdapterInfo(str(path), q_type, str(partition) if partition else None, _fworker_arg(rocket_launch),
                        rocket_launch, data)


def _default_worker_files(launchpad_path: Path | None) -> tuple[list[Path], list[Path]]:
    if launchpad_path is None:
        return [], []
    folder = launchpad_path.parent
    fworkers = sorted(Path(p) for p in glob.glob(str(folder / "my_fworker*.yaml")))
    qadapters = sorted(Path(p) for p in glob.glob(str(folder / "my_qadapter*.yaml")))
    return fworkers, qadapters


def check_workers(
    routing: Routing,
    fworker_files: list[str | Path],
    qadapter_files: list[str | Path],
) -> tuple[dict[str, list[str]], list[str]]:
    """``({category: [partitions]}, warnings)`` for the routing against these worker files.

    Raises ``SubmitError`` for an unreadable file or a qadapter without a partition. Warns for a routed
    category that no fworker pulls, and for a qadapter whose fworker cannot be found.
    """
    warnings: list[str] = []
    fworkers = [read_fworker(p) for p in fworker_files]
    qadapters = [read_qadapter(p) for p in qadapter_files]
    by_path = {str(Path(f.path).resolve()): f for f in fworkers}
    partitions: dict[str, list[str]] = {c: [] for c in sorted(routing.categories())}
    for qa in qadapters:
        if qa.fworker_file is None:
            warnings.append(f"qadapter {qa.path}: rocket_launch has no '-w <fworker file>'; the workers it starts "
                            "use the default fworker of the compute node")
            continue
        fw_path = Path(os.path.expandvars(qa.fworker_file)).expanduser()
        candidates = [fw_path] if fw_path.is_absolute() else [Path(qa.path).parent / fw_path, fw_path]
        fw = None
        for c in candidates:
            key = str(c.resolve())
            if key in by_path:
                fw = by_path[key]
                break
            if c.is_file():
                fw = read_fworker(c)
                by_path[key] = fw
                fworkers.append(fw)
                break
        if fw is None:
            warnings.append(f"qadapter {qa.path}: its fworker file {qa.fworker_file} was not found here")
            continue
        for category in partitions:
            if fw.handles(category) and qa.partition and qa.partition not in partitions[category]:
                partitions[category].append(qa.partition)
    kinds_of: dict[str, list[str]] = {}
    for kind, category in routing.model_dump().items():
        kinds_of.setdefault(category, []).append(kind)
    if not fworkers:
        warnings.append("no fworker files given or found next to the LaunchPad file: cannot check that every "
                        "routed category has a worker")
    else:
        for category, kinds in kinds_of.items():
            if not any(f.handles(category) for f in fworkers):
                warnings.append(
                    f"category {category!r} ({', '.join(kinds)} jobs) is handled by no fworker "
                    f"({', '.join(Path(f.path).name for f in fworkers)}): those jobs will wait until a worker "
                    f"with 'category: [{category}]' pulls them"
                )
            elif qadapters and not partitions.get(category):
                logger.info("category %r has an fworker but no qadapter: start `rlaunch -w <fworker> rapidfire` "
                            "for it by hand (e.g. on the login node)", category)
    return partitions, warnings


# --------------------------------------------------------------------------- JobStore


def store_location(store: Any) -> str:
    """Where a maggma store (or a JobStore's docs store) keeps its documents, without credentials."""
    from maggma.stores import MemoryStore, MongoStore

    store = getattr(store, "docs_store", store)
    if type(store) is MemoryStore:
        return "memory (not shared between processes)"
    if isinstance(store, MongoStore):
        host = getattr(store, "host", None) or "?"
        uri = getattr(store, "uri", None) or getattr(store, "ssh_tunnel", None)
        if isinstance(uri, str) and uri.startswith("mongodb"):
            host = urlsplit(uri).netloc.rsplit("@", 1)[-1]
        elif getattr(store, "port", None):
            host = f"{host}:{store.port}"
        return f"mongodb {host} [{store.database}.{store.collection_name}]"
    return f"{type(store).__name__} {getattr(store, 'name', '')}"


def jobflow_config(settings=None) -> dict[str, Any]:
    """A jobflow settings mapping whose ``JOB_STORE`` is exactly the store almat's settings name.

    Written to a file (``write_jobflow_config``) and given to the workers as ``JOBFLOW_CONFIG_FILE``,
    it makes the jobs write where ``almat status`` reads.
    """

    return {"JOB_STORE": build_job_store(settings or get_settings()).as_dict()}


def write_jobflow_config(path: str | Path, settings=None) -> Path:
    """Write ``jobflow_config(settings)`` as YAML (mode 0600: a MongoDB URI may hold a password)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(jobflow_config(settings), sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def _worker_job_store(job_store, settings):
    """The JobStore the workers will write to, and where that choice came from."""
    if job_store is not None:
        return job_store, "given"
    from jobflow import SETTINGS

    config = Path(SETTINGS.CONFIG_FILE).expanduser()
    if config.is_file():
        return SETTINGS.JOB_STORE, f"jobflow config {config}"

    return build_job_store(settings), "almat settings (no jobflow config file: workers need one, see docs/cluster.md)"


def _with_timeout(fn, timeout_s: float):
    """``fn()`` in a daemon thread; ``TimeoutError`` when it does not return in time."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --------------------------------------------------------------------------- submit


@dataclass
class SubmitResult:
    campaign: str
    workflow: str
    launchpad: str
    job_store: str
    n_fireworks: int
    fw_ids: dict[str, int]  # job name -> fw_id
    categories: dict[str, str]  # job name -> category
    partitions: dict[str, list[str]]  # category -> SLURM partitions of the qadapters pulling it
    name_checked: bool
    submitted: bool
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _campaign_maker(config, routing) -> tuple[CampaignMaker, Routing]:
    """The campaign Maker (carrying the routing) and the routing; bad input is one ``SubmitError`` line."""
    try:
        routing = load_routing(routing)
        maker = config if isinstance(config, CampaignMaker) else CampaignMaker.from_config(config)
    except (ConfigError, RoutingError, ValueError) as exc:
        raise SubmitError(str(exc)) from None
    maker.routing = routing.model_dump()
    try:
        check_oracle(maker.config.oracle)  # (a calculator that cannot be built fails here, not in a job)
    except Exception as exc:  # noqa: BLE001 - CalculatorSpecError and import errors
        raise SubmitError(f"oracle: {exc}") from None
    return maker, routing


def _store_warnings(where: str, origin: str, settings) -> list[str]:
    """What is wrong with the workers' JobStore: in memory, unnamed by a jobflow config, or not almat's."""
    if where.startswith("memory"):
        return [f"the workers' JobStore ({origin}) is in memory: outputs would be lost between jobs; set "
                "JOBFLOW_CONFIG_FILE to a jobflow.yaml with a MongoDB (or shared embedded SQLite) JOB_STORE"]
    if origin.startswith("almat settings"):
        return [f"no jobflow config file here (JOBFLOW_CONFIG_FILE or ~/.jobflow.yaml): checked the name in almat's "
                f"store ({where}); the workers' JOBFLOW_CONFIG_FILE must name that store (write_jobflow_config)"]
    mine = store_location(build_job_store(settings))
    if mine != where:
        return [f"the workers' JobStore ({where}, from {origin}) is not the one almat's settings name ({mine}): "
                "`almat status` will not see this campaign unless ALMAT_* settings point to the same database"]
    return []


def _checked_flow(maker: CampaignMaker, store, where: str, settings, resume: bool, timeout_ms: int, warn):
    """``(flow, name_checked)``: the campaign flow, built against the workers' store when it can be read
    (a campaign of the same name is refused as ``almat run`` does), else without it."""
    if not where.startswith("memory"):
        def check_name():
            db = CampaignDB.from_job_store(store, prefix=settings.collection_prefix).connect(indexes=True)
            try:
                return build_flow(maker, db, resume=resume)
            finally:
                db.close()

        try:
            return _with_timeout(check_name, timeout_ms / 1000 + 2), True
        except (CampaignExistsError, ReadOnlyStoreError) as exc:  # a reader may not run campaigns
            raise SubmitError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - unreachable store: submit anyway, but say so
            warn(f"could not read the JobStore ({where}) to check the campaign name: {type(exc).__name__}: {exc}")
    if resume:
        raise SubmitError("--resume needs the workers' JobStore to be readable from here")
    return maker.make(), False


def _refuse_live(lp, name: str) -> None:
    """A campaign with live jobs on the LaunchPad is not submitted again (with or without ``--resume``)."""
    live = live_jobs(lp, name)
    if not live:
        return
    ids = {fw["fw_id"] for fw in live}
    heads = sorted(min(set(wf["nodes"]) & ids) for wf in lp.workflows.find({"metadata.almat_campaign": name},
                                                                         {"nodes": 1}) if set(wf["nodes"]) & ids)
    defuse = f"lpad -l {shlex.quote(lp.almat_file)} defuse_wflows -i {','.join(map(str, heads))}"
    raise SubmitError(f"campaign {name!r} has {describe_live(live)} on the LaunchPad at {lp.almat_host}: it is "
                      f"submitted already (see `almat status {name}`); to submit it again, stop those first "
                      f"(`{defuse}`), then continue it with `almat submit --resume`")


def submit_campaign(
    config,
    launchpad_file: str | Path | None = None,
    routing: Routing | dict | str | Path | None = None,
    *,
    fworker_files: list[str | Path] | None = None,
    qadapter_files: list[str | Path] | None = None,
    job_store=None,
    settings=None,
    resume: bool = False,
    dry_run: bool = False,
    timeout_ms: int = 5000,
) -> SubmitResult:
    """Check, build, route and add a campaign workflow to the LaunchPad; see the module docstring.

    ``config``: a campaign config of any kind (MD, pool, NFT), a YAML path or a mapping. ``job_store``: the JobStore the workers
    use, to check the name against (default: jobflow's configured ``JOB_STORE``). ``dry_run``: do every
    check and build the workflow, but add nothing.
    """
    from jobflow.managers.fireworks import flow_to_workflow

    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        logger.warning(message)

    maker, routing = _campaign_maker(config, routing)
    cfg = maker.config
    settings = settings or get_settings()

    lp_path = find_launchpad_file(launchpad_file)
    default_fw, default_qa = _default_worker_files(lp_path)
    fworker_files = default_fw if fworker_files is None else list(fworker_files)
    qadapter_files = default_qa if qadapter_files is None else list(qadapter_files)
    partitions, worker_warnings = check_workers(routing, fworker_files, qadapter_files)
    for w in worker_warnings:
        warn(w)

    lp = load_launchpad(lp_path, timeout_ms=timeout_ms)
    _refuse_live(lp, cfg.name)
    store, origin = _worker_job_store(job_store, settings)
    where = store_location(store)
    for w in _store_warnings(where, origin, settings):
        warn(w)
    flow, name_checked = _checked_flow(maker, store, where, settings, resume, timeout_ms, warn)

    apply_routing(flow, routing)
    flow.update_metadata({CAMPAIGN_KEY: cfg.name}, dynamic=True)  # every job, added ones too: its heartbeat
    workflow_name = f"almat {cfg.name}"
    wf = flow_to_workflow(flow, name=workflow_name, metadata={"almat_campaign": cfg.name})
    fw_ids: dict[str, int] = {}
    if not dry_run:
        id_map = lp.add_wf(wf)
        fw_ids = {fw.name: id_map.get(fw.fw_id, fw.fw_id) for fw in wf.fws}
        logger.info("campaign %s: added %d fireworks to the LaunchPad at %s", cfg.name, len(wf.fws), lp.almat_host)
    return SubmitResult(
        campaign=cfg.name, workflow=workflow_name, launchpad=lp.almat_host, job_store=where,
        n_fireworks=len(wf.fws), fw_ids=fw_ids, categories={fw.name: fw.spec.get("_category") for fw in wf.fws},
        partitions=dict(partitions), name_checked=name_checked, submitted=not dry_run, warnings=warnings,
    )
