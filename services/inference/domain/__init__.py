"""Pure logic of inference: deployment state, routing hashes, parity, fixed rows, policies,
and the errors more than one floor names."""
