"""The learner: a committee of MLIPs trained on the campaign's labels, of any registered learner kind.

Import from the modules: ``base`` (the ``Learner`` contract), ``registry`` (the learner kinds, no torch),
``hyperparameters`` and ``settings`` (light, no torch), ``mace``, ``mace_finetune``, ``chgnet``, ``shallow`` (the
learners), ``committee``, ``descriptors``, ``jobs`` (``TrainCommitteeMaker``). See ``docs/learners.md``.
"""
