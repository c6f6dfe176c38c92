"""The documentation held to the code: the reference tables in docs/ against the tables they describe."""
