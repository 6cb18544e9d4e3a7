"""Conclave's control plane: configuration, errors, the facade, the CLI and the gateway."""
