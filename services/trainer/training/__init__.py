"""The worker side of a job: models, the training loop, checkpoints, evaluation, export.

Flat recipe modules in the torchtune manner: ``worker.py`` wires them together in one
place; each module is plain functions and ``nn.Module``s. Imported by the workers (and
tests and benchmarks), never by the service process.
"""
