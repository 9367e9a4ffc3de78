"""initopt's population launcher for Hydra, found through the ``hydra_plugins`` namespace."""
