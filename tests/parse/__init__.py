"""The parse stage: scanning blocks of stream lines and decoding events."""
