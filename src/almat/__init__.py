"""almat: active learning for materials.

A campaign manager for machine-learned interatomic potentials on jobflow/atomate2. The three actors
of a campaign each have a package: ``almat.learner`` (the MACE committee), ``almat.sampler`` (MD that
flags where the committee disagrees) and ``almat.oracle`` (the reference calculation that labels the
flagged configurations); ``almat.select`` picks what to label and ``almat.campaign`` ties the loop
together as one dynamic jobflow Flow.
"""

__version__ = "0.2.0"
