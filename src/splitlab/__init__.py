"""splitlab: partition AI models between end devices and a base station.

The package measures what each partitioning and scheduling choice costs:
it profiles a model stage by stage on every node, plans a cut per device,
runs the split inference across real processes over an emulated link and
records every task's delay broken into its parts.
"""

__version__ = "0.1.0"
