"""Trajectory datasets for LaMo: the episode shard format, generation, conversion, subsets.

Public entry points: ``format`` (columns, metadata, spaces, reading), ``validation``,
``writer``, ``names`` (the names of datasets we generate), ``subsets`` (seeded
low-data subsets), ``generate`` (D4RL-style behaviour data on MuJoCo v5), ``converters`` and
``rllib_output`` (Minari, D4RL, RLlib recordings), ``info``; the ``lamo-data`` command is ``cli``.
"""
