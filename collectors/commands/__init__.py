"""Command executions: ``runner`` (the collector), ``store`` (its records), ``internal`` (the
agent's own jobs) and ``client`` (the ``alpacon-agent exec`` command)."""
