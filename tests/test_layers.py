"""The package's layers: no import cycles between them, and the light modules import no torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LIGHT = ("almat.schemas, almat.settings, almat.stores, almat.uncertainty, almat.learner.hyperparameters, "
         "almat.select, almat.select.lookup, almat.oracle.calculators, almat.oracle.settings, almat.campaign.config, "
         "almat.campaign.kinds, almat.campaign.settings.common, almat.campaign.settings.md, "
         "almat.campaign.settings.pool, almat.campaign.settings.nft, almat.campaign.fingerprint, "
         "almat.campaign.sources")
WORKFLOWS = ROOT / "workflows"


def test_light_modules_import_no_torch_and_campaign_files_validate_without_it():
    code = (f"import {LIGHT}; import sys; from almat.campaign import load_config\n"
            f"for f in ('cu_emt', 'cu_pool_emt', 'cu_nft_emt'): load_config(r'{WORKFLOWS}/' + f + '.yaml')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_import_linter_layers_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
