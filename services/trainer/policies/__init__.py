"""Off-policy evaluation and learning jobs of the trainer (issue 14, ADR 0024).

``decisions`` turns the inference service's logged decisions (ListDecisions) into
``libs.decisioning.logs.LoggedDecisions``; ``worker`` runs ``evaluate``/``learn_policy`` in
a child process (torch and ONNX Runtime stay out of the service process, as with training
workers); ``jobs`` is the application: read the logs and the policy's files, run the
worker, register a learned version with its estimates.
"""
