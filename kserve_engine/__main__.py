"""Serve an archived model with KServe's model server (no TorchServe, no Java).

    python -m kserve_engine --model_dir model_store/ --model_name dino_vits8 --http_port 8085
    python -m kserve_engine --model_dir /mnt/models --host 0.0.0.0          # the container (Dockerfile)

``--model_dir`` holds the .mar that ``make archive`` wrote (or its unpacked model-config.yaml and
dino_backbone.pth); the handler settings and weights in it are the ones TorchServe would use.
KServe's own options (``--http_port``, ``--workers``, ...) are accepted as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import kserve
from kserve import model_server
from kserve.protocol.rest.server import RESTServer

from kserve_engine.model import AttentionModel, DefaultJsonContentType, EngineError, engine_error_handler, load_settings, unpack_model_dir
from vitscope.service import ConfigError, create_service, select_device

logger = logging.getLogger("kserve_engine")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[model_server.parser]
    )
    parser.add_argument("--model_dir", type=Path, required=True, help="folder with the .mar (or its unpacked files)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the container uses 0.0.0.0)")
    parser.add_argument("--gpu_id", default=os.environ.get("GPU_ID"), help="CUDA device index; default: $GPU_ID, else the CPU")
    return parser.parse_args(argv)


def bind_to(host: str) -> None:
    """KServe's REST server always listens on 0.0.0.0: make the one ModelServer creates listen on ``host``."""

    class BoundRESTServer(RESTServer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host  # read when uvicorn starts serving

    model_server.RESTServer = BoundRESTServer


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    args = parse_args(argv)
    try:
        folder = unpack_model_dir(args.model_dir)
        settings = load_settings(folder)
        service = create_service(settings.handler, settings.weights, select_device(args.gpu_id), settings.response_timeout_s, folder)
    except (FileNotFoundError, ConfigError, ValueError) as e:
        logger.error("%s", e)
        return 2
    name = args.model_name if args.model_name != "model" else service.variant.name
    model = AttentionModel(name, service, settings.version, settings.queue_size)
    model_server.app.add_exception_handler(EngineError, engine_error_handler)
    model_server.app.add_middleware(DefaultJsonContentType)
    model_server.app.add_api_route(f"/v2/models/{name}", model.metadata_endpoint, methods=["GET"])
    bind_to(args.host)
    logger.info(
        "serving %s on http://%s:%d (v1 /v1/models/%s:predict, v2 /v2/models/%s/infer)", name, args.host, args.http_port, name, name
    )
    kserve.ModelServer(http_port=args.http_port, workers=1, enable_grpc=False).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
