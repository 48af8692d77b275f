"""Score DeePMD models on a deepmd/npy test set with deepmd's own Python API (run in the peer venv).

    python score_deepmd.py TEST_DIR MODEL [MODEL ...]     # prints one JSON object

Per model and for the committee mean (DP-GEN's production model is the first one): force RMSE (eV/Å),
energy RMSE per atom (eV/atom), and the max force deviation of the committee on each test frame.
"""

import json
import sys

import dpdata
import numpy as np
from deepmd.infer import DeepPot


def score(test_dir, models):
    system = dpdata.LabeledSystem(test_dir, fmt="deepmd/npy")
    coords, cells = system["coords"], system["cells"]
    types = np.asarray(system["atom_types"])
    natoms = len(types)
    preds = []
    for path in models:
        dp = DeepPot(path)
        tmap = dp.get_type_map()
        atype = [tmap.index(system["atom_names"][t]) for t in types]
        energy, force, _ = dp.eval(coords.reshape(len(coords), -1), cells.reshape(len(cells), -1), atype)
        preds.append((np.asarray(energy).reshape(-1), np.asarray(force).reshape(len(coords), natoms, 3)))
    ref_e, ref_f = system["energies"], system["forces"]

    def errors(e, f):
        return {"force_rmse": float(np.sqrt(np.mean((f - ref_f) ** 2))),
                "energy_rmse_per_atom": float(np.sqrt(np.mean(((e - ref_e) / natoms) ** 2)))}

    mean_e = np.mean([p[0] for p in preds], axis=0)
    mean_f = np.mean([p[1] for p in preds], axis=0)
    stack = np.stack([p[1] for p in preds])
    deviation = np.sqrt(np.mean(np.sum((stack - mean_f) ** 2, axis=-1), axis=0)).max(axis=-1)
    return {"n_frames": len(coords), "models": [errors(*p) for p in preds], "mean": errors(mean_e, mean_f),
            "max_force_deviation": deviation.tolist()}


if __name__ == "__main__":
    print(json.dumps(score(sys.argv[1], sys.argv[2:])))
