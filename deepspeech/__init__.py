"""Deep Speech 2 speech recognition."""
__version__ = "0.1.0"
