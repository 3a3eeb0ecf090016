"""modelset."""
