"""Exploration stages end to end: NVT, then NPT with an adaptive lower trust level, on EMT Cu."""

import numpy as np
import pytest

from almat.campaign import load_config, run_campaign
from almat.schemas import CampaignStatus
from almat.stores import CampaignDB, get_blob

CONFIG = {
    "name": "cu-stages",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 6, "warm_start_epochs": 2,
                                                  "batch_size": 3}},
    "sampler": {"steps": 20, "sample_every": 5, "trust_lo": 1.0, "trust_hi": 5.0, "stages": [
        # every frame below trust_lo: the stage converges at once (DP-GEN's accurate ratio)
        {"name": "warm", "temperatures": [300, 600]},
        # 1 GPa NPT, two seeds; lo chosen so that 3 frames are candidates
        {"name": "hot", "ensemble": "npt", "temperatures": [900], "pressures": [1.0], "pressure_unit": "GPa",
         "barostat_time_fs": 50.0, "walkers_per_condition": 2, "adaptive_lo": {"number": 3},
         "convergence": {"conv_accuracy": 0.5}}]},
    "selection": {"policy": "max_deviation", "max_select": 2},
    "convergence": {"rule": "accurate_ratio", "calibration_samples": 0, "conv_accuracy": 0.9, "max_iterations": 4},
}


@pytest.mark.slow
def test_stages_advance_on_convergence_and_the_campaign_ends_after_the_last(tmp_path):
    from almat.settings import AlmatSettings

    settings = AlmatSettings(db_path=tmp_path / "db", run_dir=tmp_path / "runs")
    result = run_campaign(load_config(CONFIG), settings)
    first, second = result.iterations
    assert result.campaign.status == CampaignStatus.converged
    assert (first.stage, first.stage_name, second.stage, second.stage_name) == (0, "warm", 1, "hot")
    assert first.converged and first.stop_reason is None and first.accurate_ratio == 1.0 and first.n_walkers == 2
    assert second.converged and second.stop_reason and second.n_walkers == 2
    # the adaptive lower level is recorded: 3 candidates out of 10 frames
    assert second.trust_lo < 1.0 and second.n_candidates == 3 and second.candidate_ratio == pytest.approx(0.3)
    with CampaignDB.from_settings(settings) as db:
        from almat.campaign import resume_state
        from almat.sampler.md import decode_trajectory

        volumes = []
        for blob_id in second.trajectory_blob_ids:
            traj = decode_trajectory(get_blob(db.data, blob_id))
            volumes.append([abs(np.linalg.det(c)) for c in traj["cells"]])
            assert traj["stress"].shape == (len(traj["steps"]), 6)
        assert all(len(v) == 5 and abs(v[-1] - v[0]) > 1e-3 for v in volumes)  # NPT: the cell moved
        assert volumes[0] != volumes[1]  # two seeds, two walks
        state = resume_state(db, load_config(CONFIG))
    assert state.state["stage"] == 1


def test_stage_walkers_cover_systems_conditions_and_seeds():
    from almat.campaign.md import stage_walkers

    cfg = load_config({"name": "w", "structures": [{"bulk": {"name": "Cu"}}, {"bulk": {"name": "Cu"}, "supercell": [2, 1, 1]}],
                       "sampler": {"trust_lo": 0.05, "trust_hi": 0.3, "stages": [
                           {"ensemble": "npt", "temperatures": [300, 600], "pressures": [1, 10], "pressure_unit": "bar",
                            "walkers_per_condition": 2,
                            "systems": [{"structures": [1], "trust_hi": 0.5, "name": "big"},
                                        {"query": {"filters": {"campaign": "other"}, "limit": 2}}]}]}})
    starts = cfg.load_structures()
    walkers = stage_walkers(cfg.sampler, 0, starts, iteration=3)
    assert len(walkers) == 2 * 2 * 2 * 2  # systems x temperatures x pressures x seeds
    assert len({w["seed"] for w in walkers}) == len(walkers)
    big, query = walkers[:8], walkers[8:]
    assert {w["system"] for w in big} == {"big1"} and all(w["structure"] is starts[1] for w in big)
    assert {(w["trust_lo"], w["trust_hi"]) for w in big} == {(0.05, 0.5)}  # the system's own hi
    assert all(w["query"]["limit"] == 2 and w["trust_hi"] == 0.3 for w in query)
    assert {w["pressure_bar"] for w in walkers} == {1.0, 10.0} and {w["ensemble"] for w in walkers} == {"npt"}
    # another iteration, other seeds
    assert {w["seed"] for w in stage_walkers(cfg.sampler, 0, starts, iteration=4)}.isdisjoint(w["seed"] for w in walkers)


def test_query_systems_come_from_the_store(db):
    from ase.build import bulk

    from almat.sampler.jobs import _query_structures
    from almat.schemas import StructureDoc, to_structure

    docs = [StructureDoc(structure=to_structure(bulk("Cu", a=a)), source="init", campaign="other") for a in (3.6, 3.7)]
    db.upsert("structures", docs)
    found = _query_structures(db, {"collection": "structures", "filters": {"campaign": "other"}, "limit": 5})
    assert sorted(round(s.volume, 3) for s in found) == sorted(round(d.structure.volume, 3) for d in docs)
