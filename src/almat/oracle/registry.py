"""Oracle kinds and the Makers each builds from its settings (``almat.oracle.settings``).

``ORACLES`` maps an oracle kind to ``"module:function"`` factories, imported on use: ``label`` (settings ->
the Maker whose ``make(structure, campaign, iteration)`` labels one structure), ``relax`` ((settings,
prerelax) -> the Maker that relaxes a start structure; ``None``: not supported), ``check`` (settings ->
None, raises when the oracle cannot run; called before any job runs) and ``md`` ((settings, initial) -> the
Maker of the oracle's own MD, ``initial.method: oracle-md``; ``None``: not supported).
"""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Maker

from almat.oracle.cp2k import Cp2kStaticOracleMaker, cp2k_static_maker, cp2k_static_settings
from almat.oracle.cp2k_md import Cp2kMdMaker, cp2k_md_maker
from almat.oracle.cp2k_relax import Cp2kRelaxMaker, cp2k_relax_maker
from almat.oracle.jobs import AseOracleMaker
from almat.oracle.md import AseOracleMdMaker
from almat.oracle.relax import AseRelaxMaker
from almat.oracle.vasp import VaspRelaxFlowMaker, VaspStaticOracleMaker, mp_relax_maker, mp_static_maker
from almat.schemas.section import ConfigError, import_string


def ase_label_maker(settings) -> Maker:
    return AseOracleMaker(calculator=settings.calculator.spec(), compute_stress=settings.compute_stress)


def ase_relax_maker(settings, prerelax) -> Maker:
    return AseRelaxMaker(calculator=settings.calculator.spec(), fmax=prerelax.fmax, steps=prerelax.steps,
                         relax_cell=prerelax.relax_cell, trajectory_stride=prerelax.trajectory_stride)


def ase_md_maker(settings, initial) -> Maker:
    return AseOracleMdMaker(calculator=settings.calculator.spec(), compute_stress=settings.compute_stress,
                            temperature=initial.md_temperature, steps=initial.md_steps, stride=initial.md_stride,
                            n_frames=initial.n_per_structure, subsample=initial.subsample, seed=initial.seed)


def check_ase(settings) -> None:
    settings.calculator.spec().check()  # a calculator that can't be built fails here, not in a job


def vasp_label_maker(settings) -> Maker:
    return VaspStaticOracleMaker(vasp_maker=mp_static_maker(user_incar_settings=settings.incar))


def vasp_relax_maker(settings, prerelax) -> Maker:
    return VaspRelaxFlowMaker(vasp_maker=mp_relax_maker(user_incar_settings=settings.incar),
                              trajectory_stride=prerelax.trajectory_stride)


def cp2k_label_maker(settings) -> Maker:
    return Cp2kStaticOracleMaker(cp2k_maker=cp2k_static_maker(**settings.cp2k))


def cp2k_relax_factory(settings, prerelax) -> Maker:
    return Cp2kRelaxMaker(cp2k_maker=cp2k_relax_maker(settings.cp2k, steps=prerelax.steps, fmax=prerelax.fmax,
                                                      relax_cell=prerelax.relax_cell),
                          trajectory_stride=prerelax.trajectory_stride,
                          level_of_theory=cp2k_static_settings(settings.cp2k))


def cp2k_md_factory(settings, initial) -> Maker:
    return Cp2kMdMaker(cp2k_maker=cp2k_md_maker(settings.cp2k, temperature=initial.md_temperature,
                                                steps=initial.md_steps),
                       stride=initial.md_stride, n_frames=initial.n_per_structure, subsample=initial.subsample,
                       seed=initial.seed, level_of_theory=cp2k_static_settings(settings.cp2k))


@dataclass(frozen=True)
class OracleKind:
    """How one oracle kind builds its Makers (``"module:function"`` strings)."""

    label: str
    relax: str | None = None
    check: str | None = None
    md: str | None = None  # (settings, initial) -> the Maker of the oracle's own MD (initial.method: oracle-md)


_HERE = __name__
#: oracle kind -> its factories
ORACLES: dict[str, OracleKind] = {
    "ase": OracleKind(f"{_HERE}:ase_label_maker", f"{_HERE}:ase_relax_maker", f"{_HERE}:check_ase",
                      f"{_HERE}:ase_md_maker"),
    "vasp": OracleKind(f"{_HERE}:vasp_label_maker", f"{_HERE}:vasp_relax_maker"),
    "cp2k": OracleKind(f"{_HERE}:cp2k_label_maker", f"{_HERE}:cp2k_relax_factory", md=f"{_HERE}:cp2k_md_factory"),
}


def oracle_kind(settings) -> OracleKind:
    """The registry entry of an oracle's settings; an unknown kind lists the valid ones."""
    if settings.kind not in ORACLES:
        raise ConfigError(f"oracle.kind: unknown oracle kind {settings.kind!r}; valid: {', '.join(ORACLES)}")
    return ORACLES[settings.kind]


def label_maker(settings) -> Maker:
    """The Maker whose ``make(structure, campaign, iteration)`` labels one structure."""
    return import_string(oracle_kind(settings).label)(settings)


def relax_maker(settings, prerelax) -> Maker:
    """The Maker that relaxes a start structure with this oracle."""
    factory = oracle_kind(settings).relax
    if factory is None:
        raise ConfigError(f"pre-relaxation with {settings.kind.upper()} is not supported yet "
                          "(set prerelax.enabled: false)")
    return import_string(factory)(settings, prerelax)


def md_maker(settings, initial) -> Maker:
    """The Maker of the oracle's own MD from one start structure (``initial.method: oracle-md``)."""
    factory = oracle_kind(settings).md
    if factory is None:
        raise ConfigError(f"initial.method: oracle-md with {settings.kind.upper()} is not supported yet "
                          f"(supported: {', '.join(k for k, v in ORACLES.items() if v.md)})")
    return import_string(factory)(settings, initial)


def check_oracle(settings) -> None:
    """Check that the oracle can run (its calculator can be built, ...), before any job runs."""
    check = oracle_kind(settings).check
    if check is not None:
        import_string(check)(settings)
