"""What the campaign kinds differ in: the explorer.

The loop (:class:`almat.campaign.flow.CampaignMaker`) is the same for every kind::

    register -> initial data -> (train -> explore -> label [+ held-out] -> decide)*

An :class:`Explorer` says how candidates are produced (committee MD, a fixed pool, chunks of a target),
which held-out data measure the committee (calibration frames, the pool's test split, the target),
the label weights, and the stop rule. It is a small serialisable object (in the spirit of dpgen2's
``ConfSelector`` / ``ExplorationReport`` / ``StageScheduler``) and each method can be tested without
the workflow. To add a kind, subclass it and register it in ``almat.campaign.kinds.KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from monty.json import MSONable
from pydantic import BaseModel, Field

from almat.schemas import AlmatDocument, CampaignStatus, StructureDoc
from almat.stores import CampaignDB


class Exploration(BaseModel):
    """Output of an iteration's explore step: what to label, and what the decide step needs to know."""

    campaign: str
    iteration: int
    candidates: list[StructureDoc] = Field(default_factory=list, description="to label for training")
    force_weights: list[list[float]] | None = Field(None, description="per candidate, per atom (NFT chunks)")
    held_out: list[StructureDoc] = Field(default_factory=list, description="to label, never to train on")
    stop: str | None = Field(None, description="the stop rule that already fired (nothing to label then)")
    stop_reason: str | None = None


@dataclass
class Decision:
    """What an explorer decides after an iteration: its record, the campaign status, and what the next
    iteration starts from (unless ``status`` is not running)."""

    record: AlmatDocument
    status: CampaignStatus
    stop_reason: str | None
    train_ids: list[str]
    state: Any = None


@dataclass
class ResumeState:
    """Where a stored campaign stands: its next iteration, training labels, last committee, explorer state."""

    start_iteration: int
    label_ids: list[str]
    previous_model_ids: list[str]
    state: Any = None


class Explorer(MSONable):
    """The interface; subclasses are dataclasses (jobflow serialises them as MSONables)."""

    kind: ClassVar[str]
    records: ClassVar[str]  # the collection of its per-iteration records
    record_class: ClassVar[type[AlmatDocument]]
    exploration_class: ClassVar[type[Exploration]] = Exploration  # what its explore step outputs
    held_out_each_iteration: ClassVar[bool] = False  # whether ``Exploration.held_out`` is ever filled

    @classmethod
    def from_config(cls, config) -> "Explorer":
        """The explorer of a campaign config (``CampaignMaker.from_config`` builds it so)."""
        return cls()

    def check(self, config) -> None:
        """Refuse, before any job runs, what the config allows but this kind can't do."""

    def elements(self, config) -> list[str]:
        """The campaign's elements (for the campaign document)."""
        return [el.symbol for s in config.load_structures() for el in s.composition.elements]

    def setup(self, maker, db: CampaignDB) -> Any:
        """Register-time work (store a pool or a target); its result reaches :meth:`initial`."""
        return None

    def initial(self, maker, setup: Any) -> tuple[list, Any, Any]:
        """``(jobs, training labels, state)`` before iteration 0; ``setup`` may be a reference."""
        raise NotImplementedError

    def explore(self, maker, iteration: int, committee: Any, train_ids: Any, state: Any) -> tuple[list, Any]:
        """``(jobs, Exploration reference)`` of one iteration, given its committee (a reference)."""
        raise NotImplementedError

    def decide(self, maker, db: CampaignDB, iteration: int, committee, exploration: Exploration,
               labels: list, held_out: list, train_ids: list[str], state: Any) -> Decision:
        """Record the iteration and decide whether to go on."""
        raise NotImplementedError

    def held_out_ids(self, db: CampaignDB, name: str, config) -> set[str]:
        """Labels of the campaign that are never trained on (calibration frames, the test split)."""
        return set()

    def resume_state(self, db: CampaignDB, config, last: dict, label_ids: list[str]) -> tuple[list[str], Any]:
        """``(training label ids, explorer state)`` after the stored record ``last``, for a resumed campaign;
        ``label_ids`` are the campaign's ok labels that are not held out."""
        return label_ids, None

    def load_records(self, db: CampaignDB, name: str) -> list[AlmatDocument]:
        docs = sorted(getattr(db, self.records).query({"campaign": name}), key=lambda d: d["iteration"])
        return [self.record_class.from_store(d) for d in docs]
