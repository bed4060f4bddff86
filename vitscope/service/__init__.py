"""The serving core, independent of any model server and of any protocol.

config      ServiceConfig: model-config.yaml's ``handler:`` settings, checked at load
admission   deadlines (``ingest``, which every engine calls) and cost: 413 / 504 before the forward pass
pipeline    AttentionService: prepare -> check -> admit -> predict -> describe, batched
loading     create_service: settings + checkpoint -> model on its device -> service
"""

from __future__ import annotations

from .admission import ADMISSION_SHARE, Prepared
from .config import ConfigError, ServiceConfig
from .loading import create_service, select_device
from .pipeline import AttentionService

__all__ = ["ADMISSION_SHARE", "AttentionService", "ConfigError", "Prepared", "ServiceConfig", "create_service", "select_device"]
