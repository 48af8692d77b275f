"""Load a script of the project that is not a package module (benchmarks/, scripts/, workflows/) by its path."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_module(relative_path: str, name: str | None = None) -> ModuleType:
    """The file at ``ROOT / relative_path`` as a module named ``name`` (default: its stem), registered in
    ``sys.modules`` so that its dataclasses and pickled functions can look it up."""
    name = name or Path(relative_path).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
