"""models/reference."""
