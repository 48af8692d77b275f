"""An EMT calculator that stands for a killed process: with ``ALMAT_TEST_INTERRUPT="<counter file>:<n>"`` in the
environment, its n-th calculation raises ``KeyboardInterrupt`` (what Ctrl-C or a kill does to a run)."""

import os
from pathlib import Path

from ase.calculators.emt import EMT


class InterruptingEMT(EMT):
    def calculate(self, *args, **kwargs):
        spec = os.environ.get("ALMAT_TEST_INTERRUPT")
        if spec:
            path, at = spec.rsplit(":", 1)
            counter = Path(path)
            n = int(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text(str(n))
            if n == int(at):
                raise KeyboardInterrupt(f"interrupted at calculation {n}")
        return super().calculate(*args, **kwargs)
