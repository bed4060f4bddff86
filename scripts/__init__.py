"""Repository tools behind the Makefile (none of it is shipped in the .mar).

weights        make weights: the official checkpoints, cached and verified
download       the resumable, hash-checked download weights uses
archive        make archive: checkpoint -> model_store/<name>.mar
serve          make serve / stop: TorchServe in the background, its key file
serve_kserve   make serve-kserve: the same archive on KServe's model server (kserve_engine)
viewer         make viewer: the static browser viewer on loopback
background     start/stop of the background servers (pid files, readiness)
kserve_bundle  make kserve-bundle: KServe's storage layout for its TorchServe runtime
docs           the docs' tables generated from the method registry and bench/results
install_browser.sh  make browser: Debian's chromium + chromium-driver for the viewer's tests
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository root: the one place that knows it

# Ports, one home each. TorchServe's own (8080 inference, 8081 management, 8082 metrics) are stated
# in config.properties; these are the other servers' (tests check the files that repeat them).
KSERVE_ENGINE_PORT = 8086  # make serve-kserve: KServe's model server with our engine, on loopback beside TorchServe
VIEWER_PORT = 8090  # make viewer; config.properties lets exactly this origin through CORS
KSERVE_TORCHSERVE_PORT = 8085  # inside KServe's TorchServe predictor: where KServe's TorchServe runtime sends requests
