"""Built-in connectors; importing this package registers them."""

from . import csv_file, ldap, scim, synthetic  # noqa: F401
