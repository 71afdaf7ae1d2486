"""Sweeps on Ray Tune (public Ray API only), with the driver as the only MLflow writer.

| module | owns |
| --- | --- |
| ``space`` | the Tune ``param_space`` of a ``harness.config.SweepSpec``, trial assignments and labels |
| ``trainable`` | the Tune function trainable: one ``harness.run.trial.run_trial`` per trial |
| ``callback`` | the MLflow writer (``SweepLog``) and the Tune callback that drives it (its state: the write journal) |
| ``writer`` | ``StoreWriter``: the writes in order in one thread, retried until the store takes them |
| ``resume`` | finding an interrupted invocation (``--resume``), the statuses of its trials, how an invocation ends |
| ``local`` | a local Ray instance on 127.0.0.1 only, and the watchdog that ends it with the driver |
| ``driver`` | ``run_sweep``: Ray, the datasets, the parent run, the Tuner; ``sweep_file`` for the CLI |
"""
