"""Online replies as encoded bytes: wire fields and stored rows ready to copy."""
