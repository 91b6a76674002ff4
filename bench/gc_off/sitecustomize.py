"""Diagnosis only: put on a server's PYTHONPATH (``sse_fanout.py --server-gc off``), this turns
the cyclic garbage collector off in that process, to show what its pauses cost."""

import gc

gc.disable()
