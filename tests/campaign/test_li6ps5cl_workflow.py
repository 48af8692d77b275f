"""The Li6PS5Cl workflow script runs locally: enumerate -> xTB pre-relax -> one AL iteration."""


import pytest
from project_module import load_module

pytest.importorskip("tblite")
pytest.importorskip("icet")



def _load():
    return load_module("workflows/li6ps5cl_argyrodite.py")


def test_config_starts_from_distinct_enumerated_cells():
    wf = _load()
    cfg = wf.build_config("xtb", n_start=2, quick=True)
    starts = cfg.load_structures()
    assert [s.composition.reduced_formula for s in starts] == ["Li6PS5Cl"] * 2
    assert all(len(s) == 13 and s.is_ordered for s in starts)
    assert cfg.oracle.calculator.spec().path == "tblite.ase.TBLite" and cfg.prerelax.enabled
    assert wf.build_config("vasp", quick=True).oracle.kind == "vasp"


@pytest.mark.slow
def test_quick_xtb_campaign_runs(settings):
    from almat.campaign import run_campaign
    from almat.stores import CampaignDB

    wf = _load()
    result = run_campaign(wf.build_config("xtb", n_start=2, quick=True), settings)
    assert len(result.iterations) == 1
    it = result.iterations[0]
    assert it.n_frames_explored == 2 * 2 * 3  # 2 structures x 2 temperatures x (10 steps / 5 + 1) frames
    with CampaignDB.from_settings(settings) as db:
        name = result.campaign.name
        assert db.structures.count({"campaign": name, "source": "relaxed"}) == 2
        labels = list(db.labels.query({"campaign": name}))
        assert labels and all(lab["oracle"] == "ase:tblite.ase.TBLite" for lab in labels)
        assert sum(lab["status"] == "ok" for lab in labels) >= it.n_train_labels
        assert {lab["chemsys"] for lab in labels} == {"Cl-Li-P-S"}
