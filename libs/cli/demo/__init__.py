"""`lathe demo` / `make demo`: an underwriting model's whole life on the platform.

One module per step (``plan.STEPS`` orders them): boot the platform; the Lending Club
loans and the feature repository (batch, stream, on-demand views); a servicing system
streaming repayment events; labels and a point-in-time training set; the trainer service
training the models live; lineage, the promotion gate and an approval; the inference
service following the alias; the held-out slice scored online and offline; a canary;
one prediction's trace across every process.
"""
