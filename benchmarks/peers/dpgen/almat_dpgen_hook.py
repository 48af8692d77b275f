"""Start-up hook of DP-GEN's peer venv (loaded by ``almat_dpgen_hook.pth`` in every interpreter there).

It changes nothing unless peer_dpgen.py asks for it through the environment:

``ALMAT_DPGEN_SEED`` - the seed fix. dpgen draws its model seeds, LAMMPS velocity seeds and the candidate
    shuffle from Python's ``random``, and dpdispatcher 1.1 calls ``random.seed(42)`` on every submission:
    every iteration after the first would reuse the same seeds, and two benchmark seeds would give
    identical runs. With the variable set, ``random`` is seeded from the benchmark seed at start-up, and
    each ``random.seed(...)`` call made from inside dpdispatcher becomes a reseed from (benchmark seed,
    number of that call). Every submission (so every iteration and stage) gets fresh seeds, and a run
    stays reproducible for one benchmark seed.
``ALMAT_DPGEN_POLL_S`` - dpdispatcher's polling. It sleeps ``check_interval`` (30 s) between looks at its
    jobs; a ``time.sleep`` called from inside dpdispatcher is cut to at most this many seconds.
``ALMAT_DPGEN_POLL_LOG`` - every such sleep is appended to this file (``unix time, seconds``), so that the
    polling time is reported apart from the work.
"""

import os
import random
import sys
import time


def _from_dpdispatcher(depth: int = 2) -> bool:
    return sys._getframe(depth).f_globals.get("__name__", "").startswith("dpdispatcher")


def _install_seeds(base_seed: int) -> None:
    original = random.seed
    calls = [0]

    def seed(a=None, version=2):
        if _from_dpdispatcher():
            calls[0] += 1
            return original(base_seed * 1_000_003 + calls[0], version)
        return original(a, version)

    random.seed = seed
    original(base_seed)


def _install_polling(max_s: float | None, log: str | None) -> None:
    original = time.sleep

    def sleep(seconds):
        if not _from_dpdispatcher():
            return original(seconds)
        if max_s is not None:
            seconds = min(seconds, max_s)
        start = time.time()
        original(seconds)
        if log:
            with open(log, "a") as fh:
                fh.write(f"{start:.3f} {time.time() - start:.3f}\n")

    time.sleep = sleep


if os.environ.get("ALMAT_DPGEN_SEED"):
    _install_seeds(int(os.environ["ALMAT_DPGEN_SEED"]))
if os.environ.get("ALMAT_DPGEN_POLL_S") or os.environ.get("ALMAT_DPGEN_POLL_LOG"):
    _poll = os.environ.get("ALMAT_DPGEN_POLL_S")
    _install_polling(float(_poll) if _poll else None, os.environ.get("ALMAT_DPGEN_POLL_LOG"))
