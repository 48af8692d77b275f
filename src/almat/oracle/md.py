"""Initial data from the oracle's own MD (``initial.method: oracle-md``), as AIMD starts a campaign in PWact.

``AseOracleMdMaker`` runs Langevin MD with an ASE-calculator oracle (EMT, xTB, CP2K through ASE, ...) from one
start structure and keeps frames of its trajectory, every ``stride``-th step or the most diverse ones (farthest
point sampling on a per-frame fingerprint of interatomic distances). The kept frames come out labelled: the
energy, forces (and stress) the MD step computed are the label, so no oracle call is spent twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.neighborlist import neighbor_list
from jobflow import CURRENT_JOB, Maker
from pymatgen.core import Structure

from almat.oracle.calculators import CalculatorSpec
from almat.oracle.jobs import label_from_results, record_labels
from almat.schemas import LabelDoc, StructureDoc, StructureSource, to_atoms, to_structure
from almat.stores import store_job

logger = logging.getLogger(__name__)


def distance_fingerprint(atoms: Atoms, r_max: float = 5.0, bins: int = 24) -> np.ndarray:
    """A frame's histogram of interatomic distances below ``r_max`` per pair of elements, per atom: a cheap
    structural fingerprint for farthest point sampling without a model."""
    i, j, d = neighbor_list("ijd", atoms, r_max)
    zs = sorted(set(atoms.numbers.tolist()))
    pairs = {(a, b): k for k, (a, b) in enumerate((a, b) for a in zs for b in zs if a <= b)}
    out = np.zeros((len(pairs), bins))
    zi, zj = atoms.numbers[i], atoms.numbers[j]
    for (a, b), k in pairs.items():
        sel = (zi == a) & (zj == b)
        out[k] = np.histogram(d[sel], bins=bins, range=(0.0, r_max))[0]
    return out.ravel() / len(atoms)


def farthest_points(features: np.ndarray, n: int, first: int = 0) -> list[int]:
    """``n`` indices picked greedily, each the farthest (Euclidean) from those picked before; starts at
    ``first``. Fewer rows than ``n``: all of them."""
    n = min(n, len(features))
    picked = [first]
    dist = np.linalg.norm(features - features[first], axis=1)
    while len(picked) < n:
        nxt = int(np.argmax(dist))
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(features - features[nxt], axis=1))
    return sorted(picked)


def subsample(frames: list[Atoms], n: int, method: str) -> list[int]:
    """Indices of ``n`` of the MD frames: evenly spaced in time (``stride``) or by farthest point sampling
    (``fps``)."""
    if n >= len(frames):
        return list(range(len(frames)))
    if method == "fps":
        return farthest_points(np.array([distance_fingerprint(f) for f in frames]), n, first=len(frames) - 1)
    return sorted({int(round(x)) for x in np.linspace(len(frames) - 1, 0, n)})


@dataclass
class AseOracleMdMaker(Maker):
    """Langevin NVT MD with the oracle's calculator: ``steps`` steps of ``timestep_fs`` at ``temperature``,
    a frame kept every ``stride`` steps, then ``n_frames`` of them (``subsample``: ``stride`` or ``fps``),
    each labelled by the step that produced it."""

    name: str = "oracle md"
    calculator: CalculatorSpec = field(default_factory=lambda: CalculatorSpec("ase.calculators.emt", "EMT"))
    compute_stress: bool = True
    temperature: float = 600.0
    steps: int = 200
    timestep_fs: float = 2.0
    stride: int = 10
    n_frames: int = 12
    subsample: str = "stride"
    seed: int = 0

    @store_job
    def make(self, structure: StructureDoc | Structure, campaign: str | None = None,
             iteration: int | None = -1, start_index: int = 0) -> list[LabelDoc]:
        start = structure.structure if isinstance(structure, StructureDoc) else to_structure(structure)
        t0 = time.perf_counter()
        frames = self._trajectory(to_atoms(start), self.seed + 7919 * start_index)
        keep = subsample(frames, self.n_frames, self.subsample)
        job_uuid = CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else None
        parent = StructureDoc(structure=start, source=StructureSource.init, campaign=campaign, iteration=iteration)
        labels = [label_from_results(frames[k], self.calculator, source=StructureSource.md, campaign=campaign,
                                     iteration=iteration, job_uuid=job_uuid) for k in keep]
        record_labels(labels, [parent])
        logger.info("oracle MD of %s: %d steps at %.0f K in %.0f s, %d labelled frames kept (%s)",
                    start.composition.reduced_formula, self.steps, self.temperature, time.perf_counter() - t0,
                    len(labels), self.subsample)
        return labels

    def _trajectory(self, atoms: Atoms, seed: int) -> list[Atoms]:
        """The frames every ``stride`` steps (the start included), each with its calculator results."""
        atoms.calc = self.calculator.load()
        rng = np.random.default_rng(seed)
        MaxwellBoltzmannDistribution(atoms, temperature_K=self.temperature, rng=rng)
        dyn = Langevin(atoms, self.timestep_fs * units.fs, temperature_K=self.temperature, friction=0.02, rng=rng)
        frames: list[Atoms] = []

        def snapshot():
            frame = atoms.copy()
            results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
            if self.compute_stress:
                try:
                    results["stress"] = atoms.get_stress(voigt=False)
                except Exception:  # noqa: BLE001 - a calculator without stress
                    pass
            frame.info["oracle_results"] = results
            frames.append(frame)

        dyn.attach(snapshot, interval=max(self.stride, 1))
        dyn.run(self.steps)
        return frames

    @property
    def oracle_name(self) -> str:
        return self.calculator.name
