"""Procedural CLEVR-like scenes: attributes, random layouts, a renderer, datasets and layout files."""

from __future__ import annotations

from .attributes import (
    ATTR_DIM,
    COLOR_RGB,
    COLOR_SLICE,
    COLORS,
    SHAPE_SLICE,
    SHAPES,
    SIZE_SLICE,
    SIZES,
    color_index,
    decode_attributes,
    encode_attributes,
    shape_index,
    size_index,
)
from .datasets import DatasetStream, SceneBatch, SceneDataset, SceneStream, read_dataset, write_dataset
from .layout import layout_to_dict, load_layout, parse_layout, save_layout
from .scenes import (
    Labelling,
    Scene,
    SceneConfig,
    bounding_radius,
    color_concepts,
    coverage,
    label_scene,
    render_scene,
    sample_scenes,
)

__all__ = [
    "ATTR_DIM",
    "COLORS",
    "COLOR_RGB",
    "COLOR_SLICE",
    "SHAPES",
    "SHAPE_SLICE",
    "SIZES",
    "SIZE_SLICE",
    "DatasetStream",
    "Labelling",
    "Scene",
    "SceneBatch",
    "SceneConfig",
    "SceneDataset",
    "SceneStream",
    "bounding_radius",
    "color_concepts",
    "color_index",
    "coverage",
    "decode_attributes",
    "encode_attributes",
    "label_scene",
    "layout_to_dict",
    "load_layout",
    "parse_layout",
    "read_dataset",
    "render_scene",
    "sample_scenes",
    "save_layout",
    "shape_index",
    "size_index",
    "write_dataset",
]
