"""appproxy: publish internal web applications through an outbound-only connector."""

__version__ = "0.1.0"
