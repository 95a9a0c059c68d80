"""The sequence file: its schema (`schema.py`) and how a YAML file becomes one (`loading.py`)."""

from continual.config.loading import (ConfigError, ConfigWarning, dump_sequence, load_sequence,
                                      open_clip_architectures)
from continual.config.schema import DataSpec, MethodOptions, ModelConfig, Sequence, TrainingConfig

__all__ = ["ConfigError", "ConfigWarning", "DataSpec", "MethodOptions", "ModelConfig", "Sequence", "TrainingConfig",
           "dump_sequence", "load_sequence", "open_clip_architectures"]
