"""Sweeps on Ray Tune (public Ray API only), with the driver as the only MLflow writer.

| module | owns |
| --- | --- |
| ``space`` | the Tune ``param_space`` of a ``harness.config.SweepSpec``, trial assignments and labels |
| ``trainable`` | the Tune function trainable: one ``harness.run.trial.run_trial`` per trial |
| ``callback`` | the MLflow writer (``SweepLog``, a background writer) and the Tune callback that drives it |
| ``resume`` | finding an interrupted invocation (``--resume``) and the statuses of its trials |
| ``driver`` | ``run_sweep``: Ray, the datasets, the parent run, the Tuner; ``sweep_file`` for the CLI |
"""
