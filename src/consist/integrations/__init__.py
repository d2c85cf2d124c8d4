"""Integrations with tools outside Python: containers (``consist.integrations.containers``)."""
