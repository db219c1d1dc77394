"""`clusterctl verify`: a pytest-testinfra suite asserting what bootstrap promises, on
every node: services, MTU, env files, venv versions and binaries."""
