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
Campaigns run through FireWorks (``almat submit``) take no lease: their jobs write a heartbeat in the same
document instead (``almat.stores.heartbeat``). ``campaign_state`` judges a running one by what its LaunchPad
says (``LaunchPadView``, read by ``almat.launch.state``) and by that heartbeat: ``running`` while a job of it
is RUNNING or its heartbeat is fresh; ``queued`` while jobs wait READY/RESERVED for a worker, ``stalled``
after ``STALL_S``; ``lost`` for RUNNING jobs whose worker stopped pinging (what ``lpad detect_lostruns``
reports), with the command that recovers them; ``failed`` when jobs FIZZLED and none is left to run.
Without a LaunchPad it judges by the heartbeat alone, and says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from pymongo.errors import PyMongoError

from almat.settings import AlmatSettings
from almat.stores import CampaignDB, StoreError, sibling_store
from almat.stores.heartbeat import FIREWORKS

HEARTBEAT_S = 30.0
STALE_S = 180.0
#: a submitted campaign whose jobs wait READY/RESERVED this long, none RUNNING and no fresh heartbeat, is stalled
STALL_S = 600.0


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


def _fresh(lease: dict[str, Any] | None, now: datetime) -> bool:
    beat = (lease or {}).get("heartbeat_at")
    return isinstance(beat, datetime) and now - beat < timedelta(seconds=STALE_S)


def holder_alive(lease: dict[str, Any], now: datetime | None = None) -> bool:
    """Whether the process named by a lease document still runs (for FireWorks jobs: whether their
    heartbeat is fresh)."""
    if lease.get("manager") == FIREWORKS:
        return _fresh(lease, now or _now())
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
    return _fresh(lease, now or _now())


def _utc(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(when, datetime) else "?"


def describe(lease: dict[str, Any]) -> str:
    if lease.get("manager") == FIREWORKS:
        return (f"FireWorks job fw_id {lease.get('fw_id')} {lease.get('job')!r} on {lease.get('host')}, "
                f"{lease.get('event')} at {_utc(lease.get('heartbeat_at'))}")
    return f"pid {lease.get('pid')} on {lease.get('host')}, started {_utc(lease.get('started_at'))}"


def campaign_state(db: CampaignDB, doc: dict[str, Any], launchpad: Callable[[str], Any] | None = None,
                   now: datetime | None = None) -> tuple[str, str | None]:
    """A campaign's status as users should see it, and why: a ``running`` campaign whose lease holder is
    dead is ``killed``; a running submitted one (its jobs' heartbeat, or no lease at all) is judged by
    ``fireworks_state`` with ``launchpad(name)`` (a ``LaunchPadView``, or why there is none); otherwise the
    stored status and stop reason. Only reads."""
    status = str(getattr(doc.get("status"), "value", doc.get("status")))
    if status != "running":
        return status, doc.get("stop_reason")
    store = lease_store(db)
    store.connect()
    try:
        lease = store.query_one({"campaign": doc["name"]})
    finally:
        store.close()
    if lease is not None and lease.get("manager") != FIREWORKS:
        if not holder_alive(lease):
            return "killed", f"its process ({describe(lease)}) is gone; resume it (--resume)"
        return status, doc.get("stop_reason")
    if lease is None and launchpad is None:
        return status, doc.get("stop_reason")
    view = launchpad(doc["name"]) if launchpad is not None else "no LaunchPad file given"
    if lease is None and not (isinstance(view, LaunchPadView) and view.fireworks):
        return status, doc.get("stop_reason")  # not known as a submitted campaign
    return fireworks_state(lease, view, now or _now())


# --------------------------------------------------------------------------- submitted campaigns


@dataclass
class LaunchPadView:
    """What a LaunchPad holds of one campaign: the ``fireworks`` of its workflows (``fw_id``, ``name``,
    ``state``, ``updated_on``, ``spec._category``) and the RUNNING ``launches`` of its RUNNING ones
    (``launch_id``, ``fw_id``, ``host``, ``state_history``); for messages and commands, the server ``host``,
    the LaunchPad ``file`` and FireWorks' ``RUN_EXPIRATION_SECS`` (``expiration_s``) where it is read."""

    host: str
    file: str
    fireworks: list[dict[str, Any]]
    launches: list[dict[str, Any]]
    expiration_s: float


def _time(value: Any) -> datetime | None:
    """A datetime or an ISO string (FireWorks keeps both) as naive UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _named(fws: list[dict[str, Any]], limit: int = 3) -> str:
    names = [f"fw_id {fw['fw_id']} {fw.get('name')!r}" for fw in sorted(fws, key=lambda f: f["fw_id"])]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def last_ping(launch: dict[str, Any]) -> datetime | None:
    """When a running launch last told the LaunchPad it was alive (its RUNNING entry's ``updated_on``)."""
    pings = [_time(h.get("updated_on") or h.get("created_on")) for h in launch.get("state_history") or []
             if h.get("state") == "RUNNING"]
    return max((p for p in pings if p is not None), default=None)


def lost_fireworks(view: LaunchPadView, now: datetime) -> list[dict[str, Any]]:
    """The RUNNING fireworks that ``lpad detect_lostruns`` reports: every RUNNING launch of theirs last
    pinged ``expiration_s`` or more ago. Each gets the ``host`` of its launch."""
    runs: dict[int, list[dict[str, Any]]] = {}
    for launch in view.launches:
        if launch.get("state", "RUNNING") == "RUNNING":
            runs.setdefault(launch["fw_id"], []).append(launch)
    lost = []
    for fw in view.fireworks:
        pings = [last_ping(launch) for launch in runs.get(fw["fw_id"], [])]
        if fw.get("state") == "RUNNING" and pings and all(
                p is not None and (now - p).total_seconds() >= view.expiration_s for p in pings):
            lost.append({**fw, "host": runs[fw["fw_id"]][-1].get("host")})
    return lost


def _lpad(view: LaunchPadView, command: str) -> str:
    return f"`lpad -l {shlex.quote(view.file)} {command}`"


def _lost(view: LaunchPadView, lost: list[dict[str, Any]]) -> tuple[str, str]:
    ids = sorted(fw["fw_id"] for fw in lost)
    hosts = ", ".join(sorted({str(fw.get("host")) for fw in lost}))
    query = shlex.quote(json.dumps({"fw_id": {"$in": ids}}))
    return "lost", (f"{len(lost)} job(s) RUNNING on the LaunchPad at {view.host} whose worker (on {hosts}) stopped "
                    f"pinging over {_ago(view.expiration_s)} ago ({_named(lost)}); recover them with "
                    + _lpad(view, f"detect_lostruns --time {int(view.expiration_s)} --rerun -q {query}")
                    + ", then start workers")


def _waiting(view: LaunchPadView, lease: dict[str, Any] | None, now: datetime) -> tuple[str, str]:
    waiting = [fw for fw in view.fireworks if fw.get("state") in ("READY", "RESERVED")]
    times = [t for t in [_time(fw.get("updated_on")) for fw in waiting] + [(lease or {}).get("heartbeat_at")]
             if isinstance(t, datetime)]
    waited = (now - max(times)).total_seconds() if times else float("inf")
    categories = ", ".join(sorted({str((fw.get("spec") or {}).get("_category") or "any") for fw in waiting}))
    what = f"{len(waiting)} job(s) READY/RESERVED for {_ago(waited) if times else 'long'}, none RUNNING"
    if waited < STALL_S:
        return "queued", f"{what}: waiting for a worker of category {categories}"
    return "stalled", (f"{what} ({_named(waiting)}): no worker takes them; start workers for category "
                       f"{categories} (qlaunch -w <fworker of that category> rapidfire)")


def _by_heartbeat(lease: dict[str, Any] | None, why: str, now: datetime) -> tuple[str, str | None]:
    if lease is None:
        return "running", f"no heartbeat, and {why}"
    if _fresh(lease, now):
        return "running", f"judged by its heartbeat alone ({why}): {describe(lease)}"
    age = (now - lease["heartbeat_at"]).total_seconds() if isinstance(lease.get("heartbeat_at"), datetime) else 0
    return "stalled", (f"no heartbeat for {_ago(age)} ({describe(lease)}), judged without the LaunchPad ({why}): "
                       "a long job, a lost one and jobs waiting for a worker look alike from here")


def fireworks_state(lease: dict[str, Any] | None, view: LaunchPadView | str,
                    now: datetime) -> tuple[str, str | None]:
    """The state of a running submitted campaign, and why: ``view`` is what its LaunchPad holds of it (or
    why there is none to read), ``lease`` its jobs' heartbeat (or None). See the module docstring."""
    if not isinstance(view, LaunchPadView) or not view.fireworks:
        why = view if isinstance(view, str) else f"the LaunchPad at {view.host} has no workflow of it"
        return _by_heartbeat(lease, why, now)
    lost = lost_fireworks(view, now)
    if lost:
        return _lost(view, lost)
    states = Counter(fw.get("state") for fw in view.fireworks)
    if states["RUNNING"] or _fresh(lease, now):
        return "running", None
    if states["READY"] or states["RESERVED"]:
        return _waiting(view, lease, now)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    fizzled = [fw for fw in view.fireworks if fw.get("state") == "FIZZLED"]
    if fizzled:
        ids = ",".join(str(fw["fw_id"]) for fw in sorted(fizzled, key=lambda f: f["fw_id"]))
        return "failed", (f"{len(fizzled)} job(s) FIZZLED on the LaunchPad at {view.host} and none left to run "
                          f"({_named(fizzled)}): read " + _lpad(view, f"get_fws -i {ids.split(',')[0]} -d all")
                          + ", fix the cause, then " + _lpad(view, f"rerun_fws -i {ids}"))
    return "stalled", f"no job of it is READY, RESERVED or RUNNING on the LaunchPad at {view.host} ({counts})"


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
                try:
                    lease = store.query_one({"campaign": self.name})
                    if lease is None or lease.get("token") != self.token:
                        return
                    store.update({**{k: v for k, v in lease.items() if k != "_id"}, "heartbeat_at": _now()},
                                 key="campaign")
                except (PyMongoError, StoreError):  # the store went away for a while: the run says so; beat on
                    continue
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
