"""rapidvalue-agent: the on-premises agent (pure Python, no Django).

It enrolls with a one-time code, then only ever calls out: heartbeats, long-polls for jobs, runs
the built-in connectors of ``connectors/`` locally with credentials from its own config file
(never sent to RapidValue), and streams results back in idempotent chunks.
"""

__version__ = "0.1.0"
