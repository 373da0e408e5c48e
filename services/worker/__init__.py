"""The worker service: pulls its steps' manifests and runs them in Ray actors."""
