"""The parity figure of the served report: the last committee on the labels it had not seen.

torch is imported and the committee predicts on the model thread; the committee is read on the DB thread
(its weights are in the store), so neither blocks the event loop nor keeps the pages waiting for long. The
values are kept per (campaign, iteration): a second download loads no committee.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from almat.campaign.kinds import KINDS
from almat.report.plots import committee_class, parity_entry, parity_labels
from almat.serve import data


def parity_target(db, name: str, max_labels: int) -> tuple[int, list[str], list] | None:
    """``(iteration, model ids, labels)`` of the campaign's last iteration with a committee and labels it
    selected (so had not seen); None when there is none, or its kind draws no parity figure."""
    doc = data.campaign_doc(db, name)
    kind = KINDS[data.kind_of(doc)]
    if "parity" not in kind.figures:
        return None
    records = getattr(db, kind.records).query({"campaign": name}, properties=["iteration", "model_ids"])
    for rec in sorted(records, key=lambda r: r["iteration"], reverse=True):
        if rec.get("model_ids"):
            labels = parity_labels(db, name, rec["iteration"], doc.get("oracle_fingerprint") or None, max_labels)
            if labels:
                return rec["iteration"], list(rec["model_ids"]), labels
    return None


def _load(db, model_ids: list[str]) -> tuple[Any, str]:
    """The committee, or None and why not (on the DB thread: a refused model is no store failure)."""
    try:
        return committee_class().from_store(db, model_ids), ""
    except Exception as exc:  # noqa: BLE001 - a report without parity beats no report
        return None, str(exc)


class ParityCache:
    """The parity values of the served reports, by (campaign, iteration); ``loads`` counts committees read."""

    def __init__(self, backend, size: int = 16, max_labels: int = 200):
        self.backend, self.size, self.max_labels = backend, size, max_labels
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="almat-serve-models")
        self.entries: OrderedDict[tuple[str, int], tuple[tuple, dict]] = OrderedDict()
        self.loads = 0
        self.lock = asyncio.Lock()  # two downloads at once load the committee once

    async def _on_models(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _compute(self, model_ids: list[str], labels: list) -> tuple[dict | None, str]:
        try:
            await self._on_models(committee_class)  # the torch import, off the DB thread
        except Exception as exc:  # noqa: BLE001 - no torch: no parity figure
            return None, str(exc)
        committee, why = await self.backend.run(_load, model_ids)
        if committee is None:
            return None, why
        self.loads += 1
        try:
            return await self._on_models(parity_entry, labels, committee, model_ids), ""
        except Exception as exc:  # noqa: BLE001
            return None, f"prediction failed: {exc}"

    async def get(self, name: str) -> tuple[dict[int, dict], list[str]]:
        """``({iteration: parity values}, notes)`` for ``write_report(parity=...)``; a failure is a note, and is
        tried again on the next download."""
        target = await self.backend.run(parity_target, name, self.max_labels)
        if target is None:
            return {}, []
        iteration, model_ids, labels = target
        key, signature = (name, iteration), (tuple(model_ids), tuple(lab.label_id for lab in labels))
        async with self.lock:
            if key not in self.entries or self.entries[key][0] != signature:
                entry, why = await self._compute(model_ids, labels)
                if entry is None:
                    return {}, [f"iteration {iteration}: no parity plot, committee not loadable ({why})"]
                self.entries[key] = (signature, entry)
                while len(self.entries) > self.size:
                    self.entries.popitem(last=False)
            self.entries.move_to_end(key)
            return {iteration: self.entries[key][1]}, [
                f"parity: the committee of iteration {iteration} (the last one) only; `almat report` draws every "
                "iteration's"]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
