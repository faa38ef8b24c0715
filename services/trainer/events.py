"""The trainer's events and streams: ``lathe.trainer.job.<event>``, one stream per job."""

from lathe.trainer.v1 import events_pb2 as ev
from libs.eventstore import EventCatalog, EventSpec

CATALOG = EventCatalog(
    [
        EventSpec(ev.JobSubmitted, aggregate="job", name="submitted"),
        EventSpec(ev.JobQueued, aggregate="job", name="queued"),
        EventSpec(ev.PreparationStarted, aggregate="job", name="preparing"),
        EventSpec(ev.DatasetPrepared, aggregate="job", name="dataset_prepared"),
        EventSpec(ev.AttemptStarted, aggregate="job", name="started"),
        EventSpec(ev.EpochCompleted, aggregate="job", name="epoch_completed"),
        EventSpec(ev.CheckpointRecorded, aggregate="job", name="checkpointed"),
        EventSpec(ev.AttemptFailed, aggregate="job", name="attempt_failed"),
        EventSpec(ev.JobEvaluated, aggregate="job", name="evaluated"),
        EventSpec(ev.ModelExported, aggregate="job", name="exported"),
        EventSpec(ev.ModelRegistered, aggregate="job", name="registered"),
        EventSpec(ev.JobSucceeded, aggregate="job", name="succeeded"),
        EventSpec(ev.JobFailed, aggregate="job", name="failed"),
        EventSpec(ev.CancelRequested, aggregate="job", name="cancel_requested"),
        EventSpec(ev.JobCancelled, aggregate="job", name="cancelled"),
    ]
)


def job_stream(job_id: str) -> str:
    return f"job-{job_id}"
