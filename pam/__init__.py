"""pam: passive acoustic monitoring, from recorder dumps to queryable detections."""

__version__ = "0.1.0"
