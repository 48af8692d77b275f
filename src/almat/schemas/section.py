"""What every settings section shares, and the one YAML loader of almat.

``Section`` is a pydantic model that forbids unknown keys and that jobflow serialises like an MSONable;
``ConfigError`` is the one-line error of bad settings; ``format_validation_error`` turns a pydantic error
into that one line; ``load_yaml`` reads a YAML file with line and column in its errors. They sit in the
lowest layer so that the settings of every actor (learner, oracle, campaign) can use them.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """The campaign configuration is invalid; the message names the key."""


class Section(BaseModel):
    """A settings section: unknown keys are errors; jobflow serialises it like an MSONable."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def as_dict(self) -> dict[str, Any]:
        return {"@module": type(self).__module__, "@class": type(self).__name__,
                **self.model_dump(mode="json", by_alias=True)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls.model_validate({k: v for k, v in d.items() if not k.startswith("@")})


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming every bad key: ``source: a.b: message; c: unknown key``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        msg = msg.strip().splitlines()[-1]  # (a pymatgen structure's error is its whole traceback)
        nested = msg.startswith("hyperparameters.")  # (a learner's hyperparameters, checked by its kind)
        parts.append(f"{loc}.{msg}" if nested and loc else f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(parts)


def load_yaml(path: str | Path, what: str = "file", mapping: bool = True, empty: Any = None) -> Any:
    """The content of a YAML file; a missing file, a folder, bad YAML (with its line and column) or, with
    ``mapping``, a top level that is not a mapping is one ``ConfigError`` line naming the file. An empty
    file gives ``empty``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or type(exc).__name__})"
                          ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None
    if data is None:
        return empty
    if mapping and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def import_string(path: str) -> Any:
    """The object that ``"module:name"`` names (how every registry of almat names its classes and factories)."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)
