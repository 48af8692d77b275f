"""Run campaigns on a cluster: ``submit`` checks the LaunchPad, workers and JobStore, then adds the
workflow; ``routing`` sends each job to a worker category by its declared role (``train``/``explore`` ->
``gpu``, oracles and bookkeeping -> ``cpu`` by default)."""
