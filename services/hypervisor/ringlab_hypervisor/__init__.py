"""The hypervisor service: VM lifecycles, exit handling per technique, the credit scheduler
driving the pCPUs, consoles, events and statistics."""
