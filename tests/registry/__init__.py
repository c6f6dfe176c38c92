"""The driver registry: loading, validating, both of its forms."""
