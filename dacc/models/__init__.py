"""All models, imported so that Alembic sees every table."""

from dacc.models.aggregates import Aggregate, AggregationState
from dacc.models.contributors import CellContributor, ContributorQuota
from dacc.models.definitions import MeasureDefinition
from dacc.models.measures import MeasureKey, RawMeasure, RefusedRawMeasure
from dacc.models.messages import RejectedMessage
from dacc.models.publication import (
    PublicationLeaf,
    PublicationPiece,
    PublicationState,
    PublishedCell,
    PublishedVersion,
)
from dacc.models.runs import JobRunStat
from dacc.models.tokens import ApiToken

__all__ = [
    "Aggregate",
    "AggregationState",
    "ApiToken",
    "CellContributor",
    "ContributorQuota",
    "JobRunStat",
    "MeasureDefinition",
    "MeasureKey",
    "PublicationLeaf",
    "PublicationPiece",
    "PublicationState",
    "PublishedCell",
    "PublishedVersion",
    "RawMeasure",
    "RefusedRawMeasure",
    "RejectedMessage",
]
