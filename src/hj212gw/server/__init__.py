"""The asyncio shell around the protocol core, one DAS socket at a time.

connection.py (one socket; the policy for bad input) <- ConnectionHost -> listener.py (accept,
limits, timers, backpressure, shutdown); flow.py (read holds, a peer that does not read);
bindings.py (MN -> live connection, across replicas); registry.py, auth.py, pinning.py (device
policy, PW backoff, trust on first use); config.py (settings -> session config).
"""
