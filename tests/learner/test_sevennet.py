"""SevenNet-0 fine-tuned from the checkpoint bundled with sevenn, on EMT labels: the refitted shifts put it on the
new oracle's energy scale, members fine-tuned with different seeds and bootstrap resamples differ, a member is
stored and reloaded with torch's weights-only unpickler, and bad input is one line."""

import sys
from collections import OrderedDict

import numpy as np
import pytest

from almat.learner.registry import load_learner

sevenn = pytest.importorskip("sevenn")


def _errors(models, frames):
    from almat.learner.sevennet import predict_sevennet

    e, f, _ = predict_sevennet(models, frames)
    de = e[0] / np.array([len(a) for a in frames]) - np.array([a.get_potential_energy() / len(a) for a in frames])
    df = np.concatenate([f[i][0] - a.get_forces() for i, a in enumerate(frames)])
    return float(np.sqrt(np.mean(de ** 2))), float(np.sqrt(np.mean(df ** 2)))


@pytest.mark.slow
def test_two_finetuned_members_learn_the_emt_scale_differ_and_reload_safely(cu_data, monkeypatch):
    from almat.learner import models as stored
    from almat.learner.committee import Committee
    from almat.learner.sevennet import finetune_sevennet, pretrained_sevennet

    train, test = cu_data
    train, test = train[:8], test[:4]
    ids = [f"c{i}" for i in range(len(train))]
    e0, f0 = _errors([pretrained_sevennet()], test)
    assert e0 > 1.0  # EMT's Cu energies (about 0 eV/atom) are not on 7net-0's PBE scale (about -4 eV/atom)
    hp = {"epochs": 2, "batch_size": 4}
    results = [finetune_sevennet(train, ids, hp, seed=s) for s in (0, 1)]
    for result in results:
        e1, f1 = _errors([result.model], test)
        assert e1 < 0.03, e1  # the refitted shifts carry EMT's reference energy
        assert sorted(result.train_ids + result.valid_ids) == sorted(ids) and len(result.valid_ids) == 1
        assert np.isfinite(result.metrics["force_rmse"]) and len(result.history) == 2
    committee = Committee([r.model for r in results])
    pred = committee.evaluate(test, compute_stress=True)
    assert np.all(np.isfinite(pred.energies)) and np.all(np.isfinite(pred.stresses))
    assert np.all(pred.model_deviation > 1e-4)  # different seeds and bootstrap resamples: the members disagree
    assert committee.learner.elements(committee.models)[:3] == ["H", "He", "Li"]

    monkeypatch.setattr(stored, "_BUILT", OrderedDict())  # read the bytes back, not this process's copy
    blob = stored.model_to_bytes(results[0].model)
    monkeypatch.setattr(stored, "_BUILT", OrderedDict())
    again = stored.model_from_bytes(blob)  # torch.load(weights_only=True) of a state dict and its record
    np.testing.assert_allclose(Committee([again, again]).predict(test).energies[0], pred.energies[0], rtol=1e-6)

    # descriptors: the readout's node features, invariant under a rotation of the whole cell
    rotated = test[0].copy()
    rotated.rotate(37, "z", rotate_cell=True)
    d = committee.learner.descriptors(again, [test[0], rotated])
    assert d[0].shape == (len(test[0]), committee.learner.descriptor_size(again))
    np.testing.assert_allclose(d[0], d[1], atol=1e-4)

    # a warm start continues from the previous member: its shifts are kept, warm_start_epochs are run
    warm = finetune_sevennet(train, ids, {**hp, "warm_start_epochs": 1}, seed=2, init_model=results[0].model)
    assert warm.epochs == 1 and len(warm.history) == 1
    shift = "rescale_atomic_energy.shift"
    np.testing.assert_array_equal(warm.model.state_dict()[shift], results[0].model.state_dict()[shift])


@pytest.mark.slow
def test_predictions_match_sevenns_own_calculator_and_the_zero_shot_start(cu_data):
    """Energies, forces and stresses (ASE's sign and Voigt order) are SevenNet's own, frame by frame."""
    from sevenn.calculator import SevenNetCalculator

    from almat.learner.sevennet import predict_sevennet, pretrained_sevennet

    frames = cu_data[1][:2]
    e, f, s = predict_sevennet([pretrained_sevennet()], frames, stress=True)
    for calc in (SevenNetCalculator("7net-0", device="cpu"),
                 load_learner("sevennet-finetune").zero_shot_calculator(load_learner("sevennet-finetune").validate({}))):
        for i, frame in enumerate(frames):
            atoms = frame.copy()
            atoms.calc = calc
            assert abs(atoms.get_potential_energy() - e[0, i]) < 1e-4
            np.testing.assert_allclose(atoms.get_forces(), f[i][0], atol=1e-5)
            np.testing.assert_allclose(atoms.get_stress(), s[0, i], atol=1e-7)
    assert abs(s[0, 0]).max() > 1e-4  # strained cells: the stresses compared are not all zero


def test_unknown_hyperparameters_and_pretrained_names_are_refused_naming_the_valid_ones():
    learner = load_learner("sevennet-finetune")
    with pytest.raises(ValueError, match=r"^hyperparameters.epoch: unknown key; valid: pretrained, epochs, "
                                         r"warm_start_epochs, bootstrap, batch_size, lr"):
        learner.validate({"epoch": 3})
    with pytest.raises(ValueError, match=r"hyperparameters.pretrained: .*'7net-0'.*'7net-l3i5'"):
        learner.validate({"pretrained": "7net-omat"})
    with pytest.raises(ValueError, match=r"^learner sevennet-finetune: SevenNet 7net-0 does not know Po; it knows 89"):
        learner.check_elements(learner.validate({}), ["Li", "Po"])


def test_a_missing_sevenn_is_one_line_naming_the_extra_before_any_job_runs(monkeypatch):
    from almat.campaign import CampaignMaker

    monkeypatch.setitem(sys.modules, "sevenn", None)  # as if sevenn were not installed
    monkeypatch.delitem(sys.modules, "almat.learner.sevennet", raising=False)
    expected = r"^learner sevennet-finetune needs sevenn, which is not installed: pip install almat\[sevennet\]$"
    with pytest.raises(ValueError, match=expected):
        load_learner("sevennet-finetune")
    config = {"name": "no-sevenn", "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}}],
              "learner": {"kind": "sevennet-finetune"}}
    with pytest.raises(ValueError, match=r"pip install almat\[sevennet\]"):
        CampaignMaker.from_config(config)
