"""The campaign fingerprint: a hash of what defines a campaign's data, stored with the campaign.

A campaign of the same name resumes only with the same fingerprint, so a settings change that must not
change existing campaigns adds a rule to ``KEEP_OLD``: each rule edits the config's dump so that campaigns
from before the change hash as they did. ``FINGERPRINT_VERSION`` counts the changes of the recipe that did
change fingerprints on purpose (none since version 1).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from almat.oracle.settings import DEFAULT_CALCULATOR

FINGERPRINT_VERSION = 1


def _selection_without_options(data: dict[str, Any], config) -> None:
    """Campaigns from before selection options: empty options are left out."""
    if isinstance(data.get("selection"), dict) and not data["selection"].get("options"):
        data["selection"].pop("options", None)


def _oracle_as_one_section(data: dict[str, Any], config) -> None:
    """The oracle was one section with ``calculator`` and ``compute_stress`` for every kind (at their
    defaults for VASP and CP2K), and ``incar`` / ``cp2k`` only when not empty."""
    oracle = data["oracle"]
    if oracle["kind"] != "ase":
        data["oracle"] = oracle = {"calculator": dict(DEFAULT_CALCULATOR), "compute_stress": True, **oracle}
    for key in ("incar", "cp2k"):
        if not oracle.get(key):
            oracle.pop(key, None)


def _learner_kind_mace(data: dict[str, Any], config) -> None:
    """Campaigns from before learner kinds: the default kind (mace) is left out."""
    learner = data.get("learner") or {}
    if learner.get("kind") == "mace":
        learner.pop("kind")


def _committee_uncertainty(data: dict[str, Any], config) -> None:
    """Campaigns from before shallow ensembles: a committee leaves out the ensemble settings."""
    learner = data.get("learner") or {}
    if learner.get("uncertainty") == "committee":
        for key in ("uncertainty", "n_heads", "head_forces"):
            learner.pop(key, None)


#: learner settings added with single-model uncertainties (NLL shallow ensembles, LLPR): left out at their defaults
NEW_LEARNER_SETTINGS = {"nll_epochs": 0, "llpr_rank": 4}


def _learner_without_new_settings(data: dict[str, Any], config) -> None:
    """Campaigns from before NLL shallow ensembles and LLPR: the new learner settings are left out at their
    defaults."""
    learner = data.get("learner") or {}
    for key, default in NEW_LEARNER_SETTINGS.items():
        if key in learner and learner[key] == default:
            learner.pop(key)


def _rattled_initial_data(data: dict[str, Any], config) -> None:
    """Campaigns from before foundation-md initial data: rattled initial data leave out the MD settings."""
    initial = data.get("initial") or {}
    if initial.get("method") == "rattle":
        for key in ("method", "md_temperature", "md_steps"):
            initial.pop(key, None)


def _initial_without_oracle_md(data: dict[str, Any], config) -> None:
    """Campaigns from before oracle-md initial data: other methods leave out its settings."""
    initial = data.get("initial") or {}
    if initial.get("method", "rattle") != "oracle-md":
        for key in ("md_stride", "subsample"):
            initial.pop(key, None)


#: sampler settings added after the first MD campaigns: left out at their defaults
NEW_SAMPLER_SETTINGS = ("systems", "ensemble", "pressures", "pressure_unit", "thermostat_time_fs",
                        "barostat_time_fs", "walkers_per_condition", "adaptive_lo", "stages", "max_volume_factor",
                        "max_walkers_per_job", "drive", "trust_units")


def _single_stage_sampler(data: dict[str, Any], config) -> None:
    """Single-stage NVT campaigns from before stages, ensembles and walkers: the new sampler settings
    are left out at their defaults."""
    sampler = getattr(config, "sampler", None)
    if sampler is None or "sampler" not in data:
        return
    fields = type(sampler).model_fields
    for key in NEW_SAMPLER_SETTINGS:
        if getattr(sampler, key) == fields[key].get_default(call_default_factory=True):
            data["sampler"].pop(key, None)


#: stage settings added after the first staged campaigns: left out when a stage does not set them
NEW_STAGE_SETTINGS = ("trust_units",)


def _stages_without_new_settings(data: dict[str, Any], config) -> None:
    """Staged campaigns from before calibrated trust levels: a stage's unset new settings are left out."""
    stages = (data.get("sampler") or {}).get("stages") or []
    for stage in stages:
        for key in NEW_STAGE_SETTINGS:
            if isinstance(stage, dict) and stage.get(key) is None:
                stage.pop(key, None)


#: the rules that keep the fingerprints of campaigns from before a settings change, in order
KEEP_OLD: tuple[Callable[[dict[str, Any], Any], None], ...] = (
    _selection_without_options, _oracle_as_one_section, _learner_kind_mace, _committee_uncertainty,
    _learner_without_new_settings, _initial_without_oracle_md, _rattled_initial_data, _single_stage_sampler,
    _stages_without_new_settings)


def fingerprint_data(config) -> dict[str, Any]:
    """What the fingerprint hashes: the config without its ``unfingerprinted`` fields (stopping settings:
    changing them may continue a campaign), after the ``KEEP_OLD`` rules."""
    data = config.model_dump(mode="json", by_alias=True, exclude=set(config.unfingerprinted))
    for rule in KEEP_OLD:
        rule(data, config)
    return data


def fingerprint(config) -> str:
    """Hash of what defines the campaign's data (``fingerprint_data``): 16 hex digits."""
    return hashlib.sha256(json.dumps(fingerprint_data(config), sort_keys=True).encode()).hexdigest()[:16]
