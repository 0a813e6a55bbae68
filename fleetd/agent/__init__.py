"""The agent: makes this machine's systemd run what the engine scheduled here."""
