"""Who runs a campaign: one process at a time holds its lease.

``run_campaign`` takes the lease before any job runs and gives it back when it ends, however it ends. The
lease document (``<prefix>_leases``, one per campaign) names the holder: host, pid, the process's start
time, when it started running the campaign and its last heartbeat (renewed every ``HEARTBEAT_S``).
- A second process on the same campaign is refused at once, with a message naming the holder.
- A holder that died without giving the lease back (``kill -9``, a lost node) leaves it behind: on its own
  host its pid is gone (or is another process), elsewhere its heartbeat is older than ``STALE_S``. Such a
  lease no longer counts; ``campaign_state`` shows the campaign as ``killed``, and a resume takes it over.
- On the embedded store an advisory file lock next to the database makes taking the lease atomic; on a
  MongoDB server the holder reads its lease back after writing it, and the last writer wins.
Campaigns run through FireWorks (``almat submit``) have no lease: their workers are FireWorks'.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from almat.settings import AlmatSettings
from almat.stores import CampaignDB, sibling_store

HEARTBEAT_S = 30.0
STALE_S = 180.0


class CampaignBusyError(RuntimeError):
    """Another live process runs this campaign."""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # BSON stores naive UTC


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lease_store(db: CampaignDB):
    """The leases collection beside the campaigns collection."""
    name = db.campaigns.collection_name
    return sibling_store(db.campaigns, name[: -len("campaigns")] + "leases" if name.endswith("campaigns") else
                         f"{name}_leases")


def holder_alive(lease: dict[str, Any], now: datetime | None = None) -> bool:
    """Whether the process named by a lease document still runs."""
    if lease.get("host") == socket.gethostname():
        pid = int(lease.get("pid", -1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = lease.get("proc_start")
        return started is None or _proc_start(pid) in (None, started)
    beat = lease.get("heartbeat_at")
    return isinstance(beat, datetime) and (now or _now()) - beat < timedelta(seconds=STALE_S)


def describe(lease: dict[str, Any]) -> str:
    started = lease.get("started_at")
    when = started.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(started, datetime) else "?"
    return f"pid {lease.get('pid')} on {lease.get('host')}, started {when}"


def campaign_state(db: CampaignDB, doc: dict[str, Any]) -> tuple[str, str | None]:
    """A campaign's status as users should see it, and why: a ``running`` campaign whose lease holder is
    dead is ``killed``; otherwise the stored status and stop reason."""
    status = str(getattr(doc.get("status"), "value", doc.get("status")))
    if status == "running":
        store = lease_store(db)
        store.connect()
        try:
            lease = store.query_one({"campaign": doc["name"]})
        finally:
            store.close()
        if lease is not None and not holder_alive(lease):
            return "killed", f"its process ({describe(lease)}) is gone; resume it (--resume)"
    return status, doc.get("stop_reason")


class CampaignLease:
    """``with CampaignLease(db, settings, name): ...`` holds the campaign's lease for the block."""

    def __init__(self, db: CampaignDB, settings: AlmatSettings, name: str):
        self.db, self.settings, self.name = db, settings, name
        self.token = uuid.uuid4().hex
        self._lock_file = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refuse(self, lease: dict[str, Any] | None) -> None:
        who = describe(lease) if lease else "another process"
        raise CampaignBusyError(f"campaign {self.name!r} is already running ({who}); wait for it to end, or stop "
                                "that process first")

    def _file_lock(self) -> None:
        digest = hashlib.sha1(self.name.encode()).hexdigest()[:16]
        path = Path(self.settings.db_path) / f".lease-{digest}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = path.open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            self._refuse(self.store.query_one({"campaign": self.name}))

    def __enter__(self) -> "CampaignLease":
        self.store = lease_store(self.db)
        self.store.connect()
        if self.settings.embedded:
            self._file_lock()  # held: any lease left in the store is a dead process's
        else:
            current = self.store.query_one({"campaign": self.name})
            if current is not None and holder_alive(current):
                self._refuse(current)
        now = _now()
        self.store.update({"campaign": self.name, "token": self.token, "host": socket.gethostname(),
                           "pid": os.getpid(), "proc_start": _proc_start(os.getpid()), "started_at": now,
                           "heartbeat_at": now}, key="campaign")
        if not self.settings.embedded:
            time.sleep(0.5)  # two processes that wrote at once: the last writer holds it
            if (self.store.query_one({"campaign": self.name}) or {}).get("token") != self.token:
                self._refuse(self.store.query_one({"campaign": self.name}))
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        store = lease_store(CampaignDB.from_settings(self.settings))
        store.connect()
        try:
            while not self._stop.wait(HEARTBEAT_S):
                lease = store.query_one({"campaign": self.name})
                if lease is None or lease.get("token") != self.token:
                    return
                store.update({**{k: v for k, v in lease.items() if k != "_id"}, "heartbeat_at": _now()},
                             key="campaign")
        finally:
            store.close()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            lease = self.store.query_one({"campaign": self.name})
            if lease is not None and lease.get("token") == self.token:
                self.store.remove_docs({"campaign": self.name})
        finally:
            self.store.close()
            if self._lock_file is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()
