"""medfed.server: the coordinator: strategy by name with accounting, the
ServerApp, the encrypted archive, results and the report."""
