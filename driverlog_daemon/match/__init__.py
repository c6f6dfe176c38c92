"""Match: a CI account's comments x the registry -> verifications, by DriverLog's rules; comments kept."""
