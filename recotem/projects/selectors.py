"""Reads of project data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recotem.core.files import local_file
from recotem.projects.models import TrainingData

if TYPE_CHECKING:
    import pandas as pd


def read_training_data(data: TrainingData) -> pd.DataFrame:
    """The interactions of a TrainingData snapshot, with the project's columns (ids as strings)."""
    from recotem.ml.data import read_interactions  # the ML stack loads only where data is read

    with local_file(data.file) as path:
        return read_interactions(path, original_name=data.original_name, **data.project.columns)
