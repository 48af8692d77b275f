"""The oracle section of a campaign file: one of an ASE calculator, VASP or CP2K, chosen by ``kind``.

Pure data, without torch or atomate2: a campaign file validates with it. ``almat.oracle.registry`` builds
the Makers of each kind. Old files keep loading: ``kind`` defaults to ``ase``, and the keys that the one
former section carried for every kind (``calculator``, ``compute_stress``, ``incar``, ``cp2k``) are dropped
where they do not belong to the kind and keep their former defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, WrapValidator

from almat.oracle.calculators import CalculatorSpec
from almat.schemas.section import Section


class CalculatorConfig(Section):
    """An ASE calculator: ``module``, ``class`` and its keyword arguments."""

    module: str
    class_: str = Field(..., alias="class")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def spec(self) -> CalculatorSpec:
        return CalculatorSpec(self.module, self.class_, dict(self.kwargs))


#: the default calculator of an ASE oracle, as the campaign config dumps it
DEFAULT_CALCULATOR = {"module": "ase.calculators.emt", "class": "EMT", "kwargs": {}}


class AseOracleSettings(Section):
    """An ASE calculator labels each structure (default: EMT)."""

    kind: Literal["ase"] = "ase"
    calculator: CalculatorConfig = Field(default_factory=lambda: CalculatorConfig.model_validate(DEFAULT_CALCULATOR))
    compute_stress: bool = True


class VaspOracleSettings(Section):
    """VASP through atomate2: MPStaticSet labels, MPRelaxSet pre-relaxations; ``incar`` adds
    ``user_incar_settings`` to both."""

    kind: Literal["vasp"]
    incar: dict[str, Any] = Field(default_factory=dict, description="user_incar_settings of the input sets")


class Cp2kOracleSettings(Section):
    """CP2K through atomate2: static labels; ``cp2k``: ``user_input_settings`` and ``kpoints`` (see
    ``almat.oracle.cp2k.cp2k_static_maker``)."""

    kind: Literal["cp2k"]
    cp2k: dict[str, Any] = Field(default_factory=dict, description="user_input_settings, and kpoints")


#: oracle kind -> its settings
ORACLE_SETTINGS: dict[str, type[Section]] = {"ase": AseOracleSettings, "vasp": VaspOracleSettings,
                                             "cp2k": Cp2kOracleSettings}

#: the keys of the former single oracle section, at their defaults: dropped where the kind has no such key
_FORMER_DEFAULTS = {"calculator": DEFAULT_CALCULATOR, "compute_stress": True, "incar": {}, "cp2k": {}}


def _former_default(key: str, value: Any) -> bool:
    if key == "calculator" and isinstance(value, dict):
        value = {"kwargs": {}, **value}
    elif isinstance(value, CalculatorConfig):
        value = value.model_dump(by_alias=True)
    return key in _FORMER_DEFAULTS and value == _FORMER_DEFAULTS[key]


def _validate(value: Any, handler) -> Any:
    """Pick the kind (default ``ase``; an unknown one lists the valid ones), drop the former section's
    defaults, and name bad keys as ``oracle.<key>`` (not ``oracle.<kind>.<key>``)."""
    if isinstance(value, dict):
        kind = value.get("kind", "ase")
        if kind not in ORACLE_SETTINGS:
            valid = [repr(k) for k in ORACLE_SETTINGS]
            raise ValidationError.from_exception_data("oracle", [{
                "type": "literal_error", "loc": ("kind",), "input": kind,
                "ctx": {"expected": ", ".join(valid[:-1]) + f" or {valid[-1]}"}}])
        fields = ORACLE_SETTINGS[kind].model_fields
        value = {"kind": kind, **{k: v for k, v in value.items() if k in fields or not _former_default(k, v)}}
    try:
        return handler(value)
    except ValidationError as exc:
        errors = [{**e, "loc": e["loc"][1:] if e["loc"] and e["loc"][0] in ORACLE_SETTINGS else e["loc"]}
                  for e in exc.errors()]
        raise ValidationError.from_exception_data(exc.title, errors) from None


#: the oracle section: one of the kinds of ``ORACLE_SETTINGS``, chosen by ``kind``
OracleSettings = Annotated[Union[AseOracleSettings, VaspOracleSettings, Cp2kOracleSettings],
                           Field(discriminator="kind"), WrapValidator(_validate)]
