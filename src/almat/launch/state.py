"""What a LaunchPad says of a submitted campaign, for ``almat status``, ``almat serve`` and ``almat submit``.

- ``campaign_view(lp, name)``: the fireworks of the campaign's workflows (``almat submit`` names the
  campaign in each workflow's ``metadata.almat_campaign``) and the launches of its RUNNING ones, as a
  ``LaunchPadView`` for ``almat.campaign.lease.fireworks_state``;
- ``live_jobs(lp, name)``: its READY, RESERVED, RUNNING and WAITING fireworks (a second submit is refused
  while there are any);
- ``campaign_state(db, doc)``: ``almat.campaign.lease.campaign_state`` with the LaunchPad that
  ``$LAUNCHPAD_LOC`` or FireWorks' own search names. Readers only read: no LaunchPad in FireWorks'
  mongomock mode (its client writes its file back when the process exits), a short timeout, and an
  unreachable server is asked again only after ``RETRY_S``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from almat.campaign import lease
from almat.campaign.lease import LaunchPadView
from almat.launch.launchpad import launchpad_from_spec, launchpad_host, load_launchpad_spec
from almat.schemas.section import ConfigError
from almat.stores import CampaignDB

logger = logging.getLogger(__name__)

LIVE_STATES = ("READY", "RESERVED", "RUNNING", "WAITING")
TIMEOUT_MS = 3000
RETRY_S = 60.0
_FW_FIELDS = {"fw_id": 1, "name": 1, "state": 1, "updated_on": 1, "spec._category": 1}


def campaign_fw_ids(lp, name: str) -> list[int]:
    """The fw_ids of every workflow ``almat submit`` added for the campaign (one per submit)."""
    return sorted({i for wf in lp.workflows.find({"metadata.almat_campaign": name}, {"nodes": 1})
                   for i in wf.get("nodes", [])})


def campaign_view(lp, name: str, host: str, file: str, expiration_s: float) -> LaunchPadView:
    """The campaign's fireworks on ``lp`` and the RUNNING launches of its RUNNING ones. Only reads."""
    fws = list(lp.fireworks.find({"fw_id": {"$in": campaign_fw_ids(lp, name)}}, _FW_FIELDS))
    running = [fw["fw_id"] for fw in fws if fw.get("state") == "RUNNING"]
    launches = list(lp.launches.find({"fw_id": {"$in": running}, "state": "RUNNING"},
                                     {"launch_id": 1, "fw_id": 1, "host": 1, "state": 1, "state_history": 1}))
    return LaunchPadView(host, file, fws, launches, expiration_s)


def live_jobs(lp, name: str) -> list[dict[str, Any]]:
    """The campaign's fireworks that are still to run or running (READY, RESERVED, RUNNING, WAITING)."""
    query = {"fw_id": {"$in": campaign_fw_ids(lp, name)}, "state": {"$in": list(LIVE_STATES)}}
    return sorted(lp.fireworks.find(query, {"fw_id": 1, "name": 1, "state": 1}), key=lambda fw: fw["fw_id"])


def describe_live(live: list[dict[str, Any]], limit: int = 5) -> str:
    """``3 live job(s) (1 RUNNING, 2 WAITING: fw_id 4, 5, 6)``."""
    counts = Counter(fw["state"] for fw in live)
    ids = [str(fw["fw_id"]) for fw in live]
    shown = ", ".join(ids[:limit]) + (", ..." if len(ids) > limit else "")
    return (f"{len(live)} live job(s) ({', '.join(f'{counts[s]} {s}' for s in LIVE_STATES if counts[s])}: "
            f"fw_id {shown})")


def default_launchpad_file() -> Path | None:
    """``$LAUNCHPAD_LOC``, else the LaunchPad file FireWorks' own search finds, else None."""
    if os.environ.get("LAUNCHPAD_LOC"):
        return Path(os.environ["LAUNCHPAD_LOC"]).expanduser()
    from fireworks import fw_config

    return Path(fw_config.LAUNCHPAD_LOC) if fw_config.LAUNCHPAD_LOC else None


class LaunchPadReader:
    """``reader(name)``: the campaign's ``LaunchPadView``, or why there is none. One connection per
    LaunchPad file, made on first use; a server that did not answer is asked again after ``RETRY_S``."""

    def __init__(self, launchpad_file: str | Path | None = None, timeout_ms: int = TIMEOUT_MS):
        self.file, self.timeout_ms = launchpad_file, timeout_ms
        self._lp, self._host, self.path, self._error, self._failed_at = None, "", "", "", 0.0
        self._lock = threading.Lock()

    def _connect(self) -> None:
        from fireworks import fw_config

        if fw_config.MONGOMOCK_SERVERSTORE_FILE:
            raise ConfigError("FireWorks' mongomock mode: readers do not open its file")
        path = Path(self.file).expanduser() if self.file else default_launchpad_file()
        if path is None:
            raise ConfigError("no LaunchPad file here: set LAUNCHPAD_LOC")
        spec = load_launchpad_spec(path)
        self._host, self.path = launchpad_host(spec), str(path)
        self._lp = launchpad_from_spec(spec, self.timeout_ms)

    def __call__(self, name: str) -> LaunchPadView | str:
        from fireworks import fw_config

        with self._lock:
            if self._lp is None and self._error and time.monotonic() - self._failed_at < RETRY_S:
                return self._error
            try:
                if self._lp is None:
                    self._connect()
                return campaign_view(self._lp, name, self._host, self.path, float(fw_config.RUN_EXPIRATION_SECS))
            except Exception as exc:  # noqa: BLE001 - unreadable file, unreachable or refusing server
                self._lp = None
                self._error = (str(exc) if isinstance(exc, ConfigError) else
                               f"the LaunchPad at {self._host or '?'} did not answer ({type(exc).__name__})")
                self._failed_at = time.monotonic()
                logger.info("campaign state without the LaunchPad: %s", self._error)
                return self._error


_readers: dict[str, LaunchPadReader] = {}


def reader(launchpad_file: str | Path | None = None) -> LaunchPadReader:
    """The process's ``LaunchPadReader`` for this file (default: ``$LAUNCHPAD_LOC`` or FireWorks' search)."""
    key = str(launchpad_file or os.environ.get("LAUNCHPAD_LOC") or "")
    if key not in _readers:
        _readers[key] = LaunchPadReader(launchpad_file)
    return _readers[key]


def campaign_state(db: CampaignDB, doc: dict[str, Any], launchpad_file: str | Path | None = None,
                   now: datetime | None = None) -> tuple[str, str | None]:
    """``almat.campaign.lease.campaign_state``, a submitted campaign judged with its LaunchPad too."""
    return lease.campaign_state(db, doc, reader(launchpad_file), now)
