"""Place recognition networks of both seeds (CMIRL, ModaLink), assembled from config/models/*.yaml.

Components live in registries (BACKBONES, ALIGNMENTS, ENCODERS, FUSIONS, AGGREGATIONS); a config
picks one of each. See docs/models.md.
"""
from cmirl_ros.models.aggregation import AGGREGATIONS
from cmirl_ros.models.alignment import ALIGNMENTS
from cmirl_ros.models.backbones import BACKBONES
from cmirl_ros.formats import ModelFormatError
from cmirl_ros.models.checkpoint import (
    load_checkpoint,
    load_model,
    model_fingerprint,
    read_checkpoint,
    save_checkpoint,
)
from cmirl_ros.models.encoders import ENCODERS
from cmirl_ros.models.fusion import FUSIONS
from cmirl_ros.models.describer import Describer, Description, FrameTensors, describe
from cmirl_ros.models.inference import resolve_device
from cmirl_ros.models.place_model import PlaceModel, build_model, load_model_config

__all__ = [
    "AGGREGATIONS",
    "ALIGNMENTS",
    "BACKBONES",
    "Describer",
    "Description",
    "ENCODERS",
    "FUSIONS",
    "FrameTensors",
    "ModelFormatError",
    "PlaceModel",
    "build_model",
    "describe",
    "load_checkpoint",
    "load_model",
    "load_model_config",
    "model_fingerprint",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
