"""MQTT ingestion: `flask ingest mqtt` drains a broker into raw measures, losing nothing."""

from dacc.mqtt.messages import list_rejected_messages
from dacc.mqtt.worker import Counters, Worker, run_worker

__all__ = ["Counters", "Worker", "list_rejected_messages", "run_worker"]
