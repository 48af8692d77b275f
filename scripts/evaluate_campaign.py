"""Held-out errors of a campaign's final committee on frames from oracle-driven MD.

    python scripts/evaluate_campaign.py cu-emt --frames 20
"""

import argparse
import json
import warnings

warnings.filterwarnings("ignore")

from almat.campaign.evaluate import holdout_errors  # noqa: E402
from almat.stores import CampaignDB  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("campaign")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--steps", type=int, default=400, help="oracle MD steps per start structure and temperature")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with CampaignDB.from_settings() as db:
        result = holdout_errors(db, args.campaign, n_frames=args.frames, steps=args.steps)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"campaign {result['campaign']}: committee of iteration {result['iteration']}, {result['n_labels']} labels")
    print(f"held-out: {result['n_frames']} random frames of oracle MD")
    print(f"  force RMSE   {result['force_rmse']:.4f} eV/Å  (reference force RMS {result['force_rms_reference']:.3f} eV/Å)")
    print(f"  force MAE    {result['force_mae']:.4f} eV/Å")
    print(f"  energy RMSE  {1000 * result['energy_rmse_per_atom']:.2f} meV/atom")
    print(f"  mean model deviation {result['mean_model_deviation']:.4f} eV/Å vs mean max force error "
          f"{result['mean_max_force_error']:.4f} eV/Å")


if __name__ == "__main__":
    main()
