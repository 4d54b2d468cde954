"""modelyard serve package (capability built on cluster/)."""
