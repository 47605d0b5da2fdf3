"""One training loop for the three IndexTTS2 stages, run by Ray Train."""
