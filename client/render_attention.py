"""``python client/render_attention.py ...``: the client's command line from a checkout, without installing
it (running a file of client/ puts client/ on sys.path, so ``vitscope_client`` imports from beside it).
Installed (``pip install ./client``), the same is the ``render-attention`` command; ``--help`` says how
to use it, and ``vitscope_client.cli`` holds it. In Python: ``from vitscope_client import AttentionClient``.
"""

import sys

from vitscope_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
