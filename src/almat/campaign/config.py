"""Campaign configuration: one YAML file (or Python object) describes a whole campaign.

Three kinds share the loop and differ in their explorer (``kind:``, default ``md``): ``md`` (committee
MD), ``pool`` (a fixed candidate pool) and ``nft`` (chunks of a large target); ``almat.campaign.kinds``
names each kind's settings class. Every section forbids unknown keys, so a typo is an error naming the
key; every error is one ``ConfigError`` line. Sections are pydantic models that jobflow serialises
(``as_dict``/``from_dict``), so they travel between jobs as typed objects. Validating a campaign file
imports no torch.

The settings live in ``almat.campaign.settings`` (pure data), the oracle's in ``almat.oracle.settings``;
this module loads a campaign file and re-exports their names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from almat.campaign.kinds import KINDS
from almat.campaign.settings.common import (  # noqa: F401
    NAME_PATTERN, FinishSettings, InitialDataSettings, PrerelaxSettings, StructureSource, _Campaign,
)
from almat.campaign.settings.md import (  # noqa: F401
    PRESSURE_LIMITS, STAGE_FIELDS, AdaptiveTrust, CampaignConfig, ConvergenceSettings, SamplerSettings,
    SelectionSettings, StageSettings, SystemQuery, SystemSettings,
)
from almat.campaign.settings.nft import (  # noqa: F401
    NftCampaignConfig, NftChunkSettings, NftConvergenceSettings, NftTargetSettings,
)
from almat.campaign.settings.pool import (  # noqa: F401
    AcquisitionSettings, PerturbSettings, PoolCampaignConfig, PoolQuery, PoolSource,
)
from almat.learner.settings import LearnerSettings  # noqa: F401
from almat.oracle.settings import (  # noqa: F401
    AseOracleSettings, CalculatorConfig, Cp2kOracleSettings, OracleSettings, VaspOracleSettings,
)
from almat.schemas.section import ConfigError, Section, format_validation_error, load_yaml  # noqa: F401
from almat.select.lookup import ACQUISITIONS, acquisition_policy  # noqa: F401

#: a campaign config of any built-in kind (a kind of ``KINDS`` has its own class, a subclass of ``_Campaign``)
AnyCampaignConfig = CampaignConfig | PoolCampaignConfig | NftCampaignConfig


def _read(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The raw settings and where they come from (a YAML file gives its folder as ``base_dir``)."""
    if isinstance(source, dict):
        return dict(source), "campaign config"
    path = Path(source)
    data = load_yaml(path, "campaign file")
    if data is None:
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "base_dir" not in data:
        data["base_dir"] = path.parent.resolve()
    return data, str(path)


def load_config(source: str | Path | dict[str, Any] | _Campaign) -> AnyCampaignConfig:
    """A validated campaign config of any kind from a YAML file, a dict or a config object.

    Relative structure paths start at the YAML's folder (``base_dir``); an ASE oracle's calculator must
    be importable. Every error is one ``ConfigError`` line naming the key (YAML errors: line and column).
    """
    if isinstance(source, _Campaign):
        return source
    data, where = _read(source)
    kind = data.get("kind", "md")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind: {kind!r} is not a campaign kind; valid: {', '.join(KINDS)}")
    try:
        config = KINDS[kind].config_class().model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    if isinstance(config.oracle, AseOracleSettings):
        try:
            config.oracle.calculator.spec().resolve()
        except ValueError as exc:
            raise ConfigError(f"{where}: oracle.calculator: {exc}") from None
    return config
