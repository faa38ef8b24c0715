"""Baselines for the feature store benchmark, kept apart from Lathe.

``data.py`` generates the shared data set (numpy + pyarrow only, importable from
Lathe's environment and from Feast's); ``run_feast.py`` runs inside
``bench/feast_baseline/.venv`` (made by ``setup.sh``), which Lathe never depends on.
See README.md.
"""
