"""An EMT calculator that stops the MongoDB stand-in in the middle of a campaign: with
``ALMAT_TEST_STOP_SERVER="<stand-in state folder>:<counter file>:<n>"`` in the environment, its n-th calculation
first stops the server (``scripts/mongo/stop.sh``), then computes as EMT does."""

import os
import subprocess
from pathlib import Path

from ase.calculators.emt import EMT

STOP = Path(__file__).resolve().parents[1] / "scripts" / "mongo" / "stop.sh"


class ServerStoppingEMT(EMT):
    def calculate(self, *args, **kwargs):
        spec = os.environ.get("ALMAT_TEST_STOP_SERVER")
        if spec:
            state, path, at = spec.rsplit(":", 2)
            counter = Path(path)
            n = int(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text(str(n))
            if n == int(at):
                subprocess.run(["bash", str(STOP)], env={**os.environ, "ALMAT_MONGO_DIR": state}, check=True)
        return super().calculate(*args, **kwargs)
