"""The match stage: DriverLog's rules, from a CI comment to verifications."""
