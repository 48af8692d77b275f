"""Calculator specs: an ASE calculator named by import path, never by code to eval."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from monty.json import MSONable, jsanitize

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class CalculatorSpecError(ValueError):
    """The calculator spec can't be imported or instantiated."""


@dataclass
class CalculatorSpec(MSONable):
    """An importable ASE calculator: ``module`` + ``class_name`` + ``kwargs``.

    >>> CalculatorSpec("ase.calculators.emt", "EMT").load()  # doctest: +SKIP
    """

    module: str
    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, value in (("module", self.module), ("class", self.class_name)):
            if not isinstance(value, str) or not _DOTTED.match(value):
                raise CalculatorSpecError(f"calculator {what} must be a dotted Python name, got {value!r}")

    def as_dict(self) -> dict[str, Any]:  # monty would flatten a field named ``kwargs`` into the dict
        return {"@module": type(self).__module__, "@class": type(self).__name__, "module": self.module,
                "class_name": self.class_name, "kwargs": jsanitize(self.kwargs, strict=True)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalculatorSpec":
        return cls(d["module"], d["class_name"], dict(d.get("kwargs") or {}))

    @classmethod
    def from_string(cls, path: str, **kwargs: Any) -> "CalculatorSpec":
        """From ``'ase.calculators.emt.EMT'``."""
        module, _, name = path.rpartition(".")
        if not module:
            raise CalculatorSpecError(f"expected 'package.module.Class', got {path!r}")
        return cls(module, name, kwargs)

    @property
    def path(self) -> str:
        return f"{self.module}.{self.class_name}"

    @property
    def name(self) -> str:
        """Oracle name recorded in labels."""
        return f"ase:{self.path}"

    def settings(self) -> dict[str, Any]:
        return {"calculator": self.path, "kwargs": jsanitize(self.kwargs, strict=False)}

    @property
    def fingerprint(self) -> str:
        """Hash of the calculator and its settings: labels of different settings never mix."""
        blob = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolve(self) -> type:
        """Import the calculator class, with a one-line error naming what is missing."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise CalculatorSpecError(f"cannot import calculator module {self.module!r}: {exc}") from None
        try:
            return getattr(module, self.class_name)
        except AttributeError:
            raise CalculatorSpecError(f"module {self.module!r} has no calculator {self.class_name!r}") from None

    def check(self) -> None:
        """Import and instantiate once, to fail before a campaign starts rather than in its jobs."""
        self.load()

    def load(self):
        """A new calculator instance."""
        cls = self.resolve()
        try:
            calc = cls(**self.kwargs)
        except Exception as exc:  # noqa: BLE001 - report any constructor failure in one line
            raise CalculatorSpecError(f"cannot create {self.path}(**{self.kwargs!r}): {exc}") from None
        if not (hasattr(calc, "get_potential_energy") and hasattr(calc, "calculate")):
            raise CalculatorSpecError(f"{self.path} is not an ASE calculator")
        return calc
