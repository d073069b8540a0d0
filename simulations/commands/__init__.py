"""One module per `medfed` command."""
