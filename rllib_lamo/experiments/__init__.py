"""The application around the LaMo algorithm: running experiments and keeping their results.

It imports the algorithm (`rllib_lamo.lamo` and the modules beside it), never the reverse.
Modules, each importing only those listed before it:

- ``results``: reading Tune result dicts; ``experiment_file``: YAML/Python experiment files
  and their ``mlflow:`` block; ``store``: where results and the MLflow store go;
- ``progress``: the per-iteration table (a Tune callback); ``runs``: MLflow runs as we log
  them (metric names, queries, per-run figures); ``plots``: learning curves;
- ``policy_model``: a checkpoint as an MLflow pyfunc model; ``videos``: offscreen episodes;
- ``tracking``: the MLflow Tune callback; ``report``: the `lamo-report` command;
  ``cli``: the `rllib` command.
"""
