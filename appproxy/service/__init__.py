"""The public appproxy service."""
