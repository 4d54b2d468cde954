"""modelyard actors package (capability built on cluster/)."""
