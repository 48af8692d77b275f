"""The cost ledger: what every job of a campaign cost, in one collection of the campaign's store.

Every job a campaign makes is a ``MeasuredJob`` (``almat.campaign.jobs.declare_role`` makes it one): a jobflow
``Job`` whose ``run`` also writes one ledger entry (``<prefix>_ledger``, key ``job_uuid`` + ``job_index``, so
a job that FireWorks reruns replaces its entry) with:

- ``wall_s``: the job's wall seconds; ``core_s``: the CPU seconds of its process tree (user + system time of
  the process, all its threads, plus its waited-for children, such as custodian's CP2K or VASP run:
  ``resource.getrusage`` SELF + CHILDREN deltas); ``cpu_self_s`` and ``cpu_children_s`` the two parts;
- ``gpu_s`` (the wall seconds of a job that used a GPU: torch allocated memory on one, or the job called
  ``note_gpu`` or ``note_device``, as a trainer run in a child process does) and ``gpu`` (its name);
- ``host``, ``queue`` (the SLURM partition from the environment, else the FireWorks category, else ``local``),
  ``slurm_job_id``, ``fw_id``;
- the job's ``campaign``, ``iteration`` (-1: before iteration 0), ``role``, ``name``, ``state`` (``ok`` or
  ``failed``: a failed job cost too), ``started_at`` and ``ended_at``;
- for oracle jobs, ``code_timing``: the code's own account where its output in the job's folder has one
  (CP2K's ``T I M I N G`` table total; VASP's ``Total CPU time used`` / ``Elapsed time`` in OUTCAR).

A ledger entry that cannot be written is logged, never a failed job. ``cost_summary`` sums a campaign's
entries per iteration: ``almat status`` and ``almat serve`` show it.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from jobflow import Job

from almat.settings import get_settings
from almat.stores import sibling_store  # the package itself never imports this module

logger = logging.getLogger(__name__)

#: the ledger collection (``<prefix>_ledger``) and its unique key
LEDGER = "ledger"
LEDGER_KEY_FIELDS = ["job_uuid", "job_index"]
#: job metadata: ``{"campaign": name, "iteration": i}``, set where the campaign makes the job
COST_KEY = "almat_cost"
#: the job metadata key of a job's role (``almat.campaign.jobs`` declares it)
ROLE_KEY = "almat_role"

#: the cost columns: job roles summed into each (any other role: ``other``)
CATEGORIES = {"oracle": ("oracle", "label"), "training": ("train",), "exploration": ("explore", "select")}

_gpu_noted: dict[str, Any] = {}


def note_gpu(name: str = "gpu") -> None:
    """Say that the running job used a GPU that torch in this process does not see (e.g. a trainer run as a
    subprocess on a GPU): its ledger entry then counts its wall seconds as GPU seconds."""
    _gpu_noted["name"] = name


def note_device(device: str | None) -> bool:
    """Say on which torch device the running job's work runs when a child process does it (a trainer's
    ``--device``): any device but the CPU is noted as a GPU (``note_gpu``, named by the device string), so the
    job's wall seconds count as GPU seconds. True when it was one."""
    if not device or str(device).split(":")[0] == "cpu":
        return False
    note_gpu(str(device))
    return True


def _cpu_seconds() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _gpu_allocations() -> tuple[int, str | None]:
    """How many allocations torch made on the GPUs so far in this process, and the GPU's name (0, None when
    torch never touched CUDA here; torch is never imported for this)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return 0, None
        count = sum(int(torch.cuda.memory_stats(d).get("allocation.all.allocated", 0))
                    for d in range(torch.cuda.device_count()))
        return count, torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - a ledger never fails a job
        return 0, None


@dataclass
class Meter:
    """Wall, CPU (process tree) and GPU use between ``Meter()`` and ``stop()``."""

    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(tzinfo=None))
    wall0: float = field(default_factory=time.perf_counter)
    cpu0: tuple[float, float] = field(default_factory=_cpu_seconds)
    gpu0: tuple[int, str | None] = field(default_factory=_gpu_allocations)

    def __post_init__(self) -> None:
        _gpu_noted.clear()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall0
        own, children = (b - a for a, b in zip(self.cpu0, _cpu_seconds()))
        allocations, gpu_name = _gpu_allocations()
        used_gpu = allocations > self.gpu0[0] or bool(_gpu_noted)
        return {"started_at": self.started_at, "ended_at": datetime.now(timezone.utc).replace(tzinfo=None),
                "wall_s": wall, "core_s": own + children, "cpu_self_s": own, "cpu_children_s": children,
                "gpu_s": wall if used_gpu else 0.0, "gpu": (gpu_name or _gpu_noted.get("name")) if used_gpu else None}


# -- the codes' own timing ----------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode(errors="replace")


def _number(pattern: str, text: str) -> float | None:
    found = re.findall(pattern, text, flags=re.M)
    return float(found[-1]) if found else None


def cp2k_timing(path: str | Path) -> dict[str, Any] | None:
    """CP2K's own account of a run (``cp2k.out`` or ``.gz``): the total time of the ``CP2K`` line of its last
    ``T I M I N G`` table (``wall_s``, the slowest rank's), the MPI processes and threads per process, and
    ``core_s`` = wall x processes x threads (the cores it held). None when the output has no timing table."""
    text = _read_text(Path(path))
    tables = text.split("T I M I N G")
    if len(tables) < 2:
        return None
    total = re.search(r"^\s*CP2K\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s*$", tables[-1], flags=re.M)
    if total is None:
        return None
    processes = _number(r"GLOBAL\|\s+Total number of message passing processes\s+(\d+)", text) or 1
    threads = _number(r"GLOBAL\|\s+Number of threads for this process\s+(\d+)", text) or 1
    wall = float(total.group(1))
    return {"code": "cp2k", "file": Path(path).name, "wall_s": wall, "processes": int(processes),
            "threads": int(threads), "core_s": wall * processes * threads}


def vasp_timing(path: str | Path) -> dict[str, Any] | None:
    """VASP's own account of a run (``OUTCAR`` or ``.gz``): ``Elapsed time`` (``wall_s``), ``Total CPU time
    used`` (``cpu_s``, as VASP prints it: the first rank's), the cores it ran on, and ``core_s`` = wall x cores.
    None when the run did not reach its timing lines."""
    text = _read_text(Path(path))
    wall = _number(r"Elapsed time \(sec\):\s+([\d.]+)", text)
    if wall is None:
        return None
    cores = int(_number(r"running on\s+(\d+) total cores", text) or 1)
    return {"code": "vasp", "file": Path(path).name, "wall_s": wall,
            "cpu_s": _number(r"Total CPU time used \(sec\):\s+([\d.]+)", text), "cores": cores, "core_s": wall * cores}


CODE_OUTPUTS = (("cp2k.out", cp2k_timing), ("OUTCAR", vasp_timing))


def code_timing(folder: str | Path) -> dict[str, Any] | None:
    """The timing of the first code output found in ``folder`` (CP2K's or VASP's, plain or gzipped)."""
    for name, parse in CODE_OUTPUTS:
        for path in (Path(folder) / name, Path(folder) / f"{name}.gz"):
            if path.is_file():
                try:
                    return parse(path)
                except (OSError, ValueError, EOFError) as exc:
                    logger.warning("no code timing from %s (%s: %s)", path, type(exc).__name__, exc)
                    return None
    return None


# -- entries -----------------------------------------------------------------------------------------------

def where_it_ran(job: Job) -> dict[str, Any]:
    """Host, queue (SLURM partition, else FireWorks category, else ``local``), SLURM job id and ``fw_id``."""
    category = (job.config.manager_config or {}).get("_category")
    return {"host": socket.gethostname(), "queue": os.environ.get("SLURM_JOB_PARTITION") or category or "local",
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "fw_id": job.metadata.get("fw_id")}


def ledger_entry(job: Job, measured: dict[str, Any], state: str, folder: Path | None = None) -> dict[str, Any]:
    """The ledger document of one run of ``job``."""
    cost = job.metadata.get(COST_KEY) or {}
    role = job.metadata.get(ROLE_KEY)
    entry = {"job_uuid": job.uuid, "job_index": job.index, "name": job.name, "role": role,
             "campaign": cost.get("campaign"), "iteration": cost.get("iteration"), "state": state,
             **where_it_ran(job), **measured}
    if role == "oracle" and folder is not None:
        entry["code_timing"] = code_timing(folder)
    return entry


def write_entry(store: Any, entry: dict[str, Any]) -> None:
    """Upsert one entry into the ledger next to the JobStore ``store`` (its docs store's kind and server)."""
    ledger = sibling_store(store.docs_store, f"{get_settings().collection_prefix}_{LEDGER}")
    ledger.connect()
    try:
        ledger.update([entry], key=LEDGER_KEY_FIELDS)
    finally:
        if type(ledger).__name__ != "MemoryStore":  # a MemoryStore forgets everything when closed
            ledger.close()


class MeasuredJob(Job):
    """A jobflow ``Job`` that writes its ledger entry when it has run (ok or failed). It serialises as itself,
    so a FireWorks worker runs it as one too."""

    def run(self, store, job_dir: Path | None = None):
        meter, state = Meter(), "failed"
        try:
            response = super().run(store, job_dir=job_dir)
            state = "ok"
            return response
        finally:
            try:
                write_entry(store, ledger_entry(self, meter.stop(), state, Path(job_dir or os.getcwd())))
            except Exception as exc:  # noqa: BLE001 - the ledger never fails a job
                logger.warning("job %s: ledger entry not written (%s: %s)", self.name, type(exc).__name__, exc)


def measured(job: Job, campaign: str | None = None, iteration: int | None = None) -> Job:
    """Make ``job`` a ``MeasuredJob`` (in place), and say which campaign and iteration it belongs to."""
    if type(job) is Job:
        job.__class__ = MeasuredJob
    cost = dict(job.metadata.get(COST_KEY) or {})
    if campaign is not None and isinstance(campaign, str):
        cost["campaign"] = campaign
    if iteration is not None:
        cost["iteration"] = int(iteration)
    job.metadata[COST_KEY] = cost
    return job


# -- sums ---------------------------------------------------------------------------------------------------

def _category(role: str | None) -> str:
    return next((cat for cat, roles in CATEGORIES.items() if role in roles), "other")


def _row(entries: list[dict], labels: int) -> dict[str, Any]:
    hours = {cat: 0.0 for cat in (*CATEGORIES, "other")}
    for e in entries:
        hours[_category(e.get("role"))] += float(e.get("core_s") or 0.0) / 3600
    total = sum(hours.values())
    train_gpu = sum(float(e.get("gpu_s") or 0.0) for e in entries if _category(e.get("role")) == "training") / 3600
    code = [e["code_timing"] for e in entries if e.get("code_timing")]
    return {"labels": labels, "jobs": len(entries), "failed_jobs": sum(e.get("state") == "failed" for e in entries),
            "oracle_core_h": hours["oracle"], "training_core_h": hours["training"], "training_gpu_h": train_gpu,
            "exploration_core_h": hours["exploration"], "other_core_h": hours["other"], "total_core_h": total,
            "wall_h": sum(float(e.get("wall_s") or 0.0) for e in entries) / 3600,
            "core_h_per_label": total / labels if labels else None,
            "oracle_core_h_per_label": hours["oracle"] / labels if labels else None,
            "code_core_h": sum(float(c.get("core_s") or 0.0) for c in code) / 3600 if code else None}


def cost_summary(entries: Iterable[dict], labels: Iterable[dict] = ()) -> dict[str, Any]:
    """A campaign's ledger summed per iteration (-1: before iteration 0; None, last: jobs of no iteration, such
    as a production model) and in total: ok labels, core-hours of the oracle (oracle and label jobs), training
    (and its GPU hours), exploration (explore and select jobs) and the rest, core-hours per label (all of them
    over the ok labels), and the codes' own core-hours (``code_core_h``, None where no code printed any)."""
    entries = list(entries)
    ok = [lab for lab in labels if lab.get("status", "ok") == "ok"]

    def it(x: dict) -> int | None:
        return None if x.get("iteration") is None else int(x["iteration"])

    iterations = sorted({it(e) for e in entries} | {it(lab) for lab in ok}, key=lambda i: (i is None, i or 0))
    rows = [{"iteration": i, **_row([e for e in entries if it(e) == i], sum(it(lab) == i for lab in ok))}
            for i in iterations]
    return {"iterations": rows, "total": _row(entries, len(ok)),
            "hosts": sorted({str(e.get("host")) for e in entries if e.get("host")}),
            "queues": sorted({str(e.get("queue")) for e in entries if e.get("queue")})}


def campaign_cost(db: Any, name: str) -> dict[str, Any]:
    """``cost_summary`` of campaign ``name`` in a ``CampaignDB``, with its entries (``entries``)."""
    entries = [{k: v for k, v in e.items() if k not in ("_id", "last_updated")}
               for e in db.ledger.query({"campaign": name})]
    entries.sort(key=lambda e: (str(e.get("started_at")), e.get("job_index", 0)))
    labels = db.labels.query({"campaign": name}, properties=["iteration", "status"])
    return {**cost_summary(entries, labels), "entries": entries}
