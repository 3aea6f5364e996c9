"""The alert lifecycle (engine.py), its outbox payload (payload.py), acknowledgements (acks.py) and
the election of the replica that runs the scanning rules and reminders (leader.py); docs/alerts.md."""
