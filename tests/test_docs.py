"""The examples of docs/architecture.md run as they are written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_every_example_of_the_architecture_page_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})
