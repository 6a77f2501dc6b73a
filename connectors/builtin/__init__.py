"""Built-in connectors; importing this package registers them."""

from . import csv_file, synthetic  # noqa: F401
