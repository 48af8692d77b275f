"""A slow ASE oracle for the cluster tests: ASE's EMT after a sleep, so a test can catch a label job running.

Referenced from a campaign's ``oracle.calculator`` as ``{module: slow_emt, class: SlowEMT, kwargs: {delay: 3}}``;
the workers import it through ``PYTHONPATH`` (this folder). On its first calculation each instance writes
``slow_oracle.json`` (the process id and the time) into the current folder, which is the FireWorks launch
folder of the label job, then sleeps ``delay`` seconds: a test that sees that file knows the rocket with that
pid is in the middle of the oracle call.
"""

from __future__ import annotations

import json
import os
import time

from ase.calculators.emt import EMT

MARKER = "slow_oracle.json"


class SlowEMT(EMT):
    def __init__(self, delay: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        self.delay = float(delay)
        self._slept = False

    def calculate(self, *args, **kwargs):
        if not self._slept:
            self._slept = True
            with open(MARKER, "w") as fh:
                json.dump({"pid": os.getpid(), "start": time.time(), "delay": self.delay}, fh)
            time.sleep(self.delay)
        super().calculate(*args, **kwargs)
