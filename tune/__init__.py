"""modelyard tune package (capability built on cluster/)."""
