"""Stage-2 band control: the in-loop controller (`controller.py`) and the Ray Tune search over it (`search.py`)."""
