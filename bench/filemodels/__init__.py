"""The models that bench/files.py saves files through, on whichever storage it measures."""
