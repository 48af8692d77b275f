"""The examples of docs/architecture.md run as they are written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_every_example_of_the_architecture_page_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})


SRC = DOC.parents[1] / "src" / "almat"
README = DOC.parents[1] / "README.md"


def _top_level_names() -> list[str]:
    """Every package (a folder with ``__init__.py``) and module directly under src/almat."""
    packages = [p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()]
    modules = [p.stem for p in SRC.glob("*.py") if not p.name.startswith("_")]
    return sorted(packages + modules)


def _section(text: str, title: str) -> str:
    return re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M).group(1)


def test_every_package_is_in_the_layer_table_and_the_readme_layout():
    table = "\n".join(line for line in _section(DOC.read_text(), "Layers").splitlines() if line.startswith("|"))
    in_table = set(re.findall(r"`almat\.(\w+)", table))
    missing = [name for name in _top_level_names() if name not in in_table]
    assert not missing, f"docs/architecture.md's layer table does not name almat.{', almat.'.join(missing)}"
    layout = re.search(r"```\n(src/almat/.*?)```", _section(README.read_text(), "Layout"), flags=re.S).group(1)
    named = set(re.findall(r"^\s+(\w+)(?:/|\.py)\s", layout, flags=re.M))
    missing = [name for name in _top_level_names() if name not in named]
    assert not missing, f"README.md's Layout does not name {', '.join(missing)}"
