"""fleetctl: the command-line client. Must start fast: import heavy libraries lazily."""
