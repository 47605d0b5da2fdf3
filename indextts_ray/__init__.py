"""indextts-ray: the IndexTTS2 three-stage training recipe on Ray."""

__version__ = "0.1.0"
