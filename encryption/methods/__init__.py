"""One module per encryption method; each registers itself."""
