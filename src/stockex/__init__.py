"""stockex: an exchange data platform around the Tiki-Exchange ASA/XU market."""

__version__ = "0.1.0"
