"""Load drivers: real clients in the client namespace that record per-second samples."""
