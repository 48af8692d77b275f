"""Run a campaign of any kind locally (``jobflow.run_locally``) on the store that the settings name,
from its start or, with ``resume``, from where it stopped."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobflow import Flow, run_locally

from almat.campaign.explorer import ResumeState
from almat.campaign.flow import CampaignMaker
from almat.campaign.lease import CampaignBusyError, CampaignLease
from almat.oracle.registry import check_oracle
from almat.schemas import AlmatDocument, CampaignDoc, CampaignStatus, utcnow
from almat.settings import AlmatSettings, get_settings
from almat.stores import CampaignDB, build_job_store, check_connection, lost_connection

logger = logging.getLogger(__name__)


class CampaignExistsError(ValueError):
    """A campaign of that name is already in the store."""


class CampaignConvergedError(CampaignExistsError):
    """Resuming a campaign that has already finished: nothing to do."""


@dataclass
class CampaignResult:
    campaign: CampaignDoc
    iterations: list[AlmatDocument]  # the explorer's per-iteration records
    wall_time: float

    @property
    def stop(self) -> str | None:
        """The stop kind of the last record (NFT campaigns), if it has one."""
        return getattr(self.iterations[-1], "stop", None) if self.iterations else None


class _Failures(logging.Handler):
    """Collects the jobs that ``run_locally`` reports failed, each with its exception's last line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.jobs: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if " failed with exception:" in msg:
            name, trace = msg.split(" failed with exception:", 1)
            kind, sep, text = trace.strip().splitlines()[-1].partition(": ")
            self.jobs.append(f"job {name!r} failed with {kind.rsplit('.', 1)[-1]}{sep}{text}")


def _maker(config: Any) -> CampaignMaker:
    return config if isinstance(config, CampaignMaker) else CampaignMaker.from_config(config)


def resume_state(db: CampaignDB, config: Any) -> ResumeState | None:
    """Where a stored campaign stands (None before its first iteration): the next iteration, its training
    labels (ok labels that are not held out), its last committee and the explorer's state."""
    maker = _maker(config)
    cfg, explorer = maker.config, maker.explorer
    raw = sorted(getattr(db, explorer.records).query({"campaign": cfg.name}), key=lambda d: d["iteration"])
    if not raw:
        return None
    held_out = explorer.held_out_ids(db, cfg.name, cfg)
    ok = [d["label_id"] for d in db.labels.query({"campaign": cfg.name, "status": "ok"}, properties=["label_id"])]
    label_ids, state = explorer.resume_state(db, cfg, raw[-1], [i for i in ok if i not in held_out])
    return ResumeState(raw[-1]["iteration"] + 1, label_ids, list(raw[-1].get("model_ids", [])), state)


def build_flow(config: Any, db: CampaignDB, resume: bool = False) -> Flow:
    """Check the name against the store, then the campaign's flow: from its start, or resumed.

    A campaign with another configuration under the same name is refused (campaigns are never mixed);
    resuming one killed before its first iteration reruns its start, reusing every stored label."""
    maker = _maker(config)
    cfg = maker.config
    existing = db.campaigns.query_one({"name": cfg.name})
    if existing is None:
        if resume:
            logger.info("campaign %s not found; starting it", cfg.name)
        return maker.make()
    if existing.get("config_fingerprint") != cfg.fingerprint():
        raise CampaignExistsError(f"campaign {cfg.name!r} already exists with a different configuration; "
                                  "choose another name (campaigns are never mixed)")
    status = existing.get("status")
    if not resume:
        raise CampaignExistsError(f"campaign {cfg.name!r} already exists (status {status}, "
                                  f"{existing.get('n_iterations', 0)} iteration(s)); resume it (--resume) or choose "
                                  "another name")
    ended = status == CampaignStatus.converged.value or (status == CampaignStatus.stopped.value
                                                         and not cfg.resumable_when_stopped)
    if cfg.finish is not None and not existing.get("production_model_id") and (
            ended or (status == CampaignStatus.max_iterations.value
                      and existing.get("n_iterations", 0) >= cfg.iteration_limit())):
        logger.info("campaign %s has stopped (%s); training its production model (finish:)", cfg.name, status)
        job = maker.finish_job()
        return Flow([job], output=job.output, name=f"campaign {cfg.name} finish")
    if ended:
        raise CampaignConvergedError(f"campaign {cfg.name!r} has already {'converged' if status == 'converged' else 'stopped'}"
                                     f" ({existing.get('stop_reason')}); nothing to resume")
    state = resume_state(db, maker)
    _drop_unfinished_models(db, cfg.name, 0 if state is None else state.start_iteration)
    if state is None:
        logger.info("resuming %s from its start (no iteration finished yet; stored labels are reused)", cfg.name)
        return maker.make(resume=True)
    if state.start_iteration >= cfg.iteration_limit():
        raise CampaignExistsError(f"campaign {cfg.name!r} already ran {state.start_iteration} iteration(s), the "
                                  "max_iterations of its config; raise max_iterations to continue")
    logger.info("resuming %s at iteration %d with %d labels", cfg.name, state.start_iteration, len(state.label_ids))
    return maker.make(state)


def _drop_unfinished_models(db: CampaignDB, name: str, first: int) -> None:
    """Models trained for iterations that never got their record (the run was killed) are used by nothing:
    a resume trains those iterations again, so their documents and weights are removed."""
    docs = list(db.models.query({"campaign": name, "iteration": {"$gte": first}},
                                properties=["model_id", "weights_blob_id"]))
    if docs:
        db.data.remove_docs({"blob_uuid": {"$in": [d["weights_blob_id"] for d in docs]}})
        db.models.remove_docs({"model_id": {"$in": [d["model_id"] for d in docs]}})
        logger.info("removed %d model(s) of unfinished iterations of %s", len(docs), name)


def open_store(settings: AlmatSettings, config) -> tuple:
    """Check the server and the oracle before any job runs; the ``JobStore`` and its ``CampaignDB``."""
    check_connection(settings)
    check_oracle(config.oracle)  # e.g. a calculator that can't be built fails here, not in a job
    job_store = build_job_store(settings)
    return job_store, CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect(indexes=True)


def run_campaign(config: Any, settings: AlmatSettings | None = None, resume: bool = False,
                 verbose: bool = False) -> CampaignResult:
    """Run a campaign (a config, its YAML or dict, or a ``CampaignMaker``) to its end with
    ``jobflow.run_locally``; returns the stored campaign and its per-iteration records. A campaign whose
    last record has no stop reason did not finish: it is marked failed, and a ``RuntimeError`` names the
    job that failed."""
    start = time.perf_counter()
    maker = _maker(config)
    cfg = maker.config
    settings = settings or get_settings()
    job_store, db = open_store(settings, cfg)
    reopen = lambda: CampaignDB.from_job_store(job_store, prefix=settings.collection_prefix).connect()  # noqa: E731
    try:
        with CampaignLease(db, settings, cfg.name):  # a second process on this campaign is refused here
            flow = build_flow(maker, db, resume=resume)
            db.close()  # the jobs open their own
            why = _run(flow, job_store, Path(settings.run_dir) / cfg.name, verbose)
            db = reopen()
            records = maker.explorer.load_records(db, cfg.name)
            raw = db.campaigns.query_one({"name": cfg.name})
            campaign = CampaignDoc.from_store(raw) if raw else None
            finished = bool(records) and records[-1].stop_reason is not None
            if campaign is not None and not finished:
                _mark_failed(db, campaign, f"did not finish: {why}")
    except BaseException as exc:  # noqa: BLE001 - Ctrl-C, SIGTERM, ...: the campaign says so, then go on
        if (lost := lost_connection(exc, settings)) is not None:  # the server went away: nothing to mark
            raise lost from None
        if not isinstance(exc, (CampaignExistsError, CampaignBusyError)):
            db.close()
            db = reopen()
            raw = db.campaigns.query_one({"name": cfg.name})
            if raw is not None and raw.get("status") == CampaignStatus.running.value:
                _mark_failed(db, CampaignDoc.from_store(raw), f"interrupted ({type(exc).__name__}); resume it")
        raise
    finally:
        db.close()
    if campaign is None or not finished:
        raise RuntimeError(f"campaign {cfg.name} did not finish: {why}; fix the cause, then resume it (--resume)")
    return CampaignResult(campaign, records, time.perf_counter() - start)


def _run(flow: Flow, job_store, root: Path, verbose: bool) -> str:
    """``run_locally``; why it stopped early, naming each failed job and its exception ("it was
    interrupted" when no job failed)."""
    root.mkdir(parents=True, exist_ok=True)
    failures = _Failures()
    local_log = logging.getLogger("jobflow.managers.local")
    local_log.addHandler(failures)
    level = local_log.level
    local_log.setLevel(logging.INFO)
    try:
        run_locally(flow, store=job_store, create_folders=True, root_dir=root, log=verbose)
    finally:
        local_log.removeHandler(failures)
        local_log.setLevel(level)
    return "; ".join(failures.jobs) or "it was interrupted"


def _mark_failed(db: CampaignDB, campaign: CampaignDoc, reason: str) -> None:
    campaign.status, campaign.stop_reason, campaign.updated_at = CampaignStatus.failed, reason, utcnow()
    db.upsert("campaigns", [campaign])
