"""The scheduling policy on its own: pure functions, no services, no wall clock."""
