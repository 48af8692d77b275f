"""The heartbeat of a submitted campaign: its FireWorks jobs say when and where they work on it.

``almat submit`` tags every job of a campaign with ``metadata["almat_campaign"]`` (jobflow passes the tag
on to the jobs the campaign adds while it runs). Under FireWorks (the job knows its ``fw_id``), every
``store_job`` of such a campaign writes one small document to the campaign's lease (``<prefix>_leases``,
key ``campaign``): ``manager: fireworks``, host, ``fw_id``, job uuid and name, SLURM job id, the event
(``start``, ``beat`` every ``BEAT_S`` while the job runs, ``end`` or ``failed``) and ``heartbeat_at``.
A local run writes nothing here (``almat.campaign.lease`` holds its lease). A heartbeat that cannot be
written is logged, never a failed job. ``almat.campaign.lease.campaign_state`` reads it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from jobflow import CURRENT_JOB
from maggma.core import Store

from almat.settings import get_settings

logger = logging.getLogger(__name__)

#: the job metadata key naming a submitted job's campaign (set by ``almat submit``)
CAMPAIGN_KEY = "almat_campaign"
#: the lease document's ``manager`` when FireWorks jobs run the campaign
FIREWORKS = "fireworks"
BEAT_S = 30.0


def leases_collection(prefix: str) -> str:
    """The leases collection of a collection prefix."""
    return f"{prefix}_leases"


def heartbeat_doc(campaign: str, job: Any, event: str) -> dict[str, Any]:
    """The lease document of a FireWorks job of ``campaign``."""
    doc = {"campaign": campaign, "manager": FIREWORKS, "host": socket.gethostname(), "pid": os.getpid(),
           "fw_id": job.metadata.get("fw_id"), "job_uuid": job.uuid, "job": job.name, "event": event,
           "heartbeat_at": datetime.now(timezone.utc).replace(tzinfo=None)}
    if os.environ.get("SLURM_JOB_ID"):
        doc["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return doc


class _Beat(threading.Thread):
    """Writes the job's start, a beat every ``BEAT_S``, then its end, on a connection of its own."""

    def __init__(self, store: Store, campaign: str, job: Any):
        super().__init__(name=f"heartbeat {campaign}", daemon=True)
        self.store, self.campaign, self.job = store, campaign, job
        self.stop, self.outcome = threading.Event(), "end"

    def write(self, event: str) -> None:
        try:
            self.store.update(heartbeat_doc(self.campaign, self.job, event), key="campaign")
        except Exception as exc:  # noqa: BLE001 - a heartbeat never fails the job
            logger.warning("campaign %s: heartbeat not written (%s: %s)", self.campaign, type(exc).__name__, exc)

    def run(self) -> None:
        try:
            self.store.connect()
        except Exception as exc:  # noqa: BLE001
            logger.warning("campaign %s: no heartbeat (%s: %s)", self.campaign, type(exc).__name__, exc)
            return
        try:
            self.write("start")
            while not self.stop.wait(BEAT_S):
                self.write("beat")
            self.write(self.outcome)
        finally:
            self.store.close()


@contextmanager
def job_heartbeat(sibling: Callable[[Store, str], Store]) -> Iterator[None]:
    """Around a ``store_job``: the heartbeat of a submitted campaign's job under FireWorks (else nothing).
    ``sibling(store, name)`` opens another collection beside the JobStore's (``almat.stores.sibling_store``)."""
    job, store = CURRENT_JOB.job, CURRENT_JOB.store
    campaign = job.metadata.get(CAMPAIGN_KEY) if job is not None else None
    if campaign is None or store is None or "fw_id" not in job.metadata:
        yield
        return
    beat = _Beat(sibling(store.docs_store, leases_collection(get_settings().collection_prefix)), campaign, job)
    beat.start()
    try:
        yield
    except BaseException:
        beat.outcome = "failed"
        raise
    finally:
        beat.stop.set()
        beat.join(timeout=10)
