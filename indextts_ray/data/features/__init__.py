"""Feature extractors: 16 kHz audio -> conditioning features (T, dim) and 50 Hz semantic codes (T,)."""
