"""UnifiedVoice v2 (IndexTTS2 GPT) and the training-only heads."""
