"""BrainImageNet-AD training library: runs in plain Python and in Slicer's Python, without Qt.

It may import ``BrainImageNetADLib`` (networks, bundles); the reverse never happens.
"""

__version__ = "0.1.0"
