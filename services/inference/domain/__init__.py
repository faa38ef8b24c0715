"""Pure logic of inference: deployment state, routing hashes, parity, fixed rows, policies."""
