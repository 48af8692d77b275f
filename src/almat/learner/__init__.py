"""The learner: a committee of MLIPs (MACE) trained on the campaign's labels.

Import from the modules: ``hyperparameters`` (light, no torch), ``mace``, ``committee``, ``descriptors``, ``jobs``.
"""
