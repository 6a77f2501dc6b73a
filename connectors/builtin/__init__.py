"""Built-in connectors; importing this package registers them."""

from . import csv_file, ldap, synthetic  # noqa: F401
