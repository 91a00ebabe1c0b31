"""Cascade stages, one module per stage; ``base`` holds the stage API and the registry."""

from ..config import ABLATIONS, STAGE_ORDER
from .base import (
    STAGE_HELP,
    Stage,
    StageNotImplemented,
    StageOutputMissing,
    TrainContext,
    get_stage,
    register_stage,
)

__all__ = [
    "ABLATIONS",
    "STAGE_HELP",
    "STAGE_ORDER",
    "Stage",
    "StageNotImplemented",
    "StageOutputMissing",
    "TrainContext",
    "get_stage",
    "register_stage",
]
