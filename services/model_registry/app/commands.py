"""Registry commands: check invariants, record events, keep read models in step.

Writes to a model's own stream (policy, versions, approvals) queue behind a row
lock on the model, so versions are numbered without retries. Aliases live in
streams of their own and move optimistically: the caller names the version the
alias points to now, and a concurrent move makes the append fail (ABORTED).

Each command returns its result from its own transaction (never re-read after commit,
when another caller's change may have landed), and records it with the caller's
client request id, if any, so a retry gets it back instead of applying again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from lathe.model_registry.v1 import events_pb2, message_pb2
from libs.db import transaction
from libs.errors import AlreadyExists, Conflict, DataLoss, NotFound
from libs.eventstore import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    ClientRequest,
    EventMetadata,
    EventStore,
    Recorder,
    RequestLog,
    WrongExpectedVersion,
)
from services.model_registry.app.policy import check_promotion
from services.model_registry.app.upload_lease import UploadLease
from services.model_registry.app.uploads import DeclaredArtifact, receive_artifacts
from services.model_registry.events import CATALOG, alias_stream, artifact_stream, model_stream
from services.model_registry.store.artifacts import (
    ArtifactStore,
    BlobCorrupted,
    BlobMissing,
    BlobRef,
)
from services.model_registry.store.projection import RegistryProjection, version_of
from services.model_registry.store.queries import LockedModel, RegistryQueries


@dataclass(frozen=True)
class NewModel:
    name: str
    description: str
    owner: str
    tags: dict[str, str]
    policy: message_pb2.PromotionPolicy


@dataclass(frozen=True)
class NewVersion:
    model_name: str
    description: str
    signature: message_pb2.Signature
    metrics: dict[str, float]
    tags: dict[str, str]
    lineage: message_pb2.Lineage
    artifacts: tuple[DeclaredArtifact, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class AliasMove:
    model_name: str
    alias: str
    version: int
    """Target version; 0 deletes the alias."""
    expected_version: int
    """What the caller believes the alias points to now (0: unset)."""
    traffic_share: float = 0.0


class RegistryCommands:
    """Every state change of the registry goes through here."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        queries: RegistryQueries,
        artifacts: ArtifactStore,
        requests: RequestLog,
        upload_lease: UploadLease | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._queries = queries
        self._artifacts = artifacts
        self._requests = requests
        self._upload_lease = upload_lease
        """Held before an upload starts; None where nothing sweeps dead uploads (tests)."""
        self._recorder = Recorder(store, CATALOG, RegistryProjection())

    async def create_model(
        self, new: NewModel, metadata: EventMetadata, request: ClientRequest | None = None
    ) -> message_pb2.Model:
        """Record the model; returns it as created."""
        async with transaction(self._pool) as conn:
            return await self._requests.once(
                conn, request, message_pb2.Model, lambda: self._create_model(conn, new, metadata)
            )

    async def _create_model(
        self, conn: asyncpg.Connection, new: NewModel, metadata: EventMetadata
    ) -> message_pb2.Model:
        created = events_pb2.ModelCreated(
            name=new.name,
            description=new.description,
            owner=new.owner,
            tags=new.tags,
            policy=new.policy,
        )
        try:
            await self._recorder.record(
                conn,
                model_stream(new.name),
                [created],
                expected_version=NO_STREAM,
                metadata=metadata,
            )
        except WrongExpectedVersion:
            raise AlreadyExists(
                f"model {new.name!r} exists already; names are never reused, "
                "so pick another name or register a new version of this model"
            ) from None
        return await self._model_in(conn, new.name)

    async def set_policy(
        self,
        model_name: str,
        policy: message_pb2.PromotionPolicy,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> message_pb2.Model:
        """Replace the model's policy; returns the model with it."""

        async def apply(conn: asyncpg.Connection) -> message_pb2.Model:
            await self._lock(conn, model_name)
            changed = events_pb2.PromotionPolicySet(model_name=model_name, policy=policy)
            await self._record_on_model(conn, model_name, changed, metadata)
            return await self._model_in(conn, model_name)

        async with transaction(self._pool) as conn:
            return await self._requests.once(conn, request, message_pb2.Model, lambda: apply(conn))

    async def register_version(
        self,
        new: NewVersion,
        chunks: AsyncIterator[tuple[str, bytes]],
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> message_pb2.ModelVersion:
        """Store every artifact, then record the version; returns it as registered.

        A retry of a registration already recorded gets it back before any chunk is read.
        """
        if (recorded := await self._requests.replay(request, message_pb2.ModelVersion)) is not None:
            return recorded
        await self._require_model(new.model_name)
        if self._upload_lease is not None:
            await self._upload_lease.held()
        artifacts = await receive_artifacts(self._artifacts, new.artifacts, chunks)
        for artifact in artifacts:
            # Spares the blobs from orphan collection from here on (app/blob_collection.py);
            # before the transaction, so the file system is not waited on under the lock.
            if not await self._artifacts.keep(artifact.sha256):
                raise Conflict(
                    f"artifact {artifact.name!r} was collected as an orphan before this "
                    "version was recorded (the upload took longer than the grace period?); "
                    "register the version again"
                )
        async with transaction(self._pool) as conn:
            return await self._requests.once(
                conn,
                request,
                message_pb2.ModelVersion,
                lambda: self._record_version(conn, new, artifacts, metadata),
            )

    async def _record_version(
        self,
        conn: asyncpg.Connection,
        new: NewVersion,
        artifacts: list[message_pb2.Artifact],
        metadata: EventMetadata,
    ) -> message_pb2.ModelVersion:
        locked = await self._lock(conn, new.model_name)
        version = locked.latest_version + 1
        registered = events_pb2.ModelVersionRegistered(
            model_name=new.model_name,
            version=version,
            description=new.description,
            signature=new.signature,
            metrics=new.metrics,
            tags=new.tags,
            lineage=new.lineage,
            artifacts=artifacts,
        )
        recorded = await self._record_on_model(conn, new.model_name, registered, metadata)
        return version_of(recorded.events[-1], registered)

    async def approve(
        self,
        model_name: str,
        version: int,
        alias: str,
        comment: str,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> None:
        async def apply(conn: asyncpg.Connection) -> empty_pb2.Empty:
            await self._lock(conn, model_name)
            await self._require_version(conn, model_name, version)
            approved = events_pb2.ModelVersionApproved(
                model_name=model_name, version=version, alias=alias, comment=comment
            )
            await self._record_on_model(conn, model_name, approved, metadata)
            return empty_pb2.Empty()

        async with transaction(self._pool) as conn:
            await self._requests.once(conn, request, empty_pb2.Empty, lambda: apply(conn))

    async def move_alias(
        self, move: AliasMove, metadata: EventMetadata, request: ClientRequest | None = None
    ) -> message_pb2.Alias:
        """Set (version > 0) or delete (version 0) an alias if it is where the caller expects.

        Returns the alias as this move left it (version 0: deleted), from the move's own
        event: a later move by another caller may already have landed when this returns.
        """
        async with transaction(self._pool) as conn:
            return await self._requests.once(
                conn, request, message_pb2.Alias, lambda: self._move_alias(conn, move, metadata)
            )

    async def _move_alias(
        self, conn: asyncpg.Connection, move: AliasMove, metadata: EventMetadata
    ) -> message_pb2.Alias:
        model = await self._queries.model(move.model_name, conn)
        if model is None:
            raise _model_not_found(move.model_name)
        state = await self._queries.alias(move.model_name, move.alias, conn)
        current = state.alias.version if state is not None else 0
        if current != move.expected_version:
            where = f"points to version {current}" if current else "is not set"
            raise Conflict(
                f"alias {move.alias!r} of {move.model_name!r} {where}, not "
                f"{move.expected_version or 'unset'} as expected; it moved since you read "
                "it: resolve it again and retry"
            )
        if move.version:
            target = await self._require_version(conn, move.model_name, move.version)
            approvers = await self._queries.approvers(
                move.model_name, move.version, move.alias, conn
            )
            check_promotion(
                model.policy,
                move.alias,
                target,
                approvers=approvers,
                actor=metadata.actor,
                current_version=current,
            )
            event: events_pb2.AliasSet | events_pb2.AliasDeleted = events_pb2.AliasSet(
                model_name=move.model_name,
                alias=move.alias,
                version=move.version,
                previous_version=current,
                traffic_share=move.traffic_share,
            )
        elif current:
            event = events_pb2.AliasDeleted(
                model_name=move.model_name, alias=move.alias, previous_version=current
            )
        else:
            raise NotFound(f"alias {move.alias!r} of model {move.model_name!r} is not set")
        try:
            recorded = await self._recorder.record(
                conn,
                alias_stream(move.model_name, move.alias),
                [event],
                expected_version=state.stream_version if state is not None else NO_STREAM,
                metadata=metadata,
            )
        except WrongExpectedVersion:
            raise Conflict(
                f"alias {move.alias!r} of {move.model_name!r} was moved by a concurrent call; "
                "resolve it again and retry"
            ) from None
        return _alias_after(move, recorded)

    async def open_artifact(
        self, model_name: str, version: int, artifact_name: str
    ) -> tuple[message_pb2.Artifact, AsyncIterator[bytes]]:
        """The artifact's metadata and a verified content stream; DataLoss if corrupted."""
        model_version = await self._queries.version(model_name, version)
        if model_version is None:
            raise _version_not_found(model_name, version)
        artifact = next((a for a in model_version.artifacts if a.name == artifact_name), None)
        if artifact is None:
            names = [a.name for a in model_version.artifacts]
            raise NotFound(
                f"version {version} of {model_name!r} has no artifact {artifact_name!r}; "
                f"it has {names}"
            )
        try:
            blob = await self._artifacts.verify(artifact.sha256)
        except BlobCorrupted as corrupted:
            await self._record_corruption(corrupted)
            raise DataLoss(
                f"artifact {artifact_name!r} of {model_name!r} v{version} failed its sha256 check "
                "and was not served; the corruption is recorded: restore the blob or re-register"
            ) from corrupted
        except BlobMissing as missing:
            raise DataLoss(
                f"artifact {artifact_name!r} of {model_name!r} v{version}: {missing}"
            ) from missing
        return artifact, self._verified_stream(blob)

    async def _verified_stream(self, blob: BlobRef) -> AsyncIterator[bytes]:
        try:
            async for data in self._artifacts.read(blob):
                yield data
        except BlobCorrupted as corrupted:  # changed on disk while it was being read
            await self._record_corruption(corrupted)
            raise DataLoss(
                f"blob {blob.sha256} changed while it was read; discard what you received"
            ) from corrupted

    async def _record_corruption(self, corrupted: BlobCorrupted) -> None:
        detected = events_pb2.ArtifactCorruptionDetected(
            sha256=corrupted.expected.sha256,
            actual_sha256=corrupted.actual_sha256,
            size_bytes=corrupted.actual_size,
        )
        async with transaction(self._pool) as conn:
            await self._recorder.record(
                conn,
                artifact_stream(corrupted.expected.sha256),
                [detected],
                expected_version=ANY_VERSION,
                metadata=EventMetadata(actor="model-registry"),
            )

    async def _lock(self, conn: asyncpg.Connection, model_name: str) -> LockedModel:
        locked = await self._queries.lock_model(conn, model_name)
        if locked is None:
            raise _model_not_found(model_name)
        return locked

    async def _model_in(self, conn: asyncpg.Connection, name: str) -> message_pb2.Model:
        model = await self._queries.model(name, conn)
        assert model is not None, "read inside the transaction that recorded it"
        return model

    async def _require_model(self, model_name: str) -> None:
        async with self._pool.acquire() as conn:
            if await self._queries.model(model_name, conn) is None:
                raise _model_not_found(model_name)

    async def _require_version(
        self, conn: asyncpg.Connection, model_name: str, version: int
    ) -> message_pb2.ModelVersion:
        found = await self._queries.version(model_name, version, conn)
        if found is None:
            raise _version_not_found(model_name, version)
        return found

    async def _record_on_model(
        self, conn: asyncpg.Connection, model_name: str, event: Message, metadata: EventMetadata
    ) -> AppendResult:
        # The model row is locked, so the stream version read here is the one we append after.
        stream = model_stream(model_name)
        current = await self._store.stream_version(stream, conn=conn)
        return await self._recorder.record(
            conn, stream, [event], expected_version=current, metadata=metadata
        )


def _alias_after(move: AliasMove, recorded: AppendResult) -> message_pb2.Alias:
    """The alias as the move's own recorded event left it (what the projection holds)."""
    event = recorded.events[-1]
    alias = message_pb2.Alias(
        name=move.alias,
        version=move.version,
        traffic_share=move.traffic_share if move.version else 0.0,
        updated_by=event.metadata.actor,
    )
    alias.update_time.FromDatetime(event.recorded_at)
    return alias


def _model_not_found(name: str) -> NotFound:
    return NotFound(f"no model named {name!r}; ListModels shows the registered ones")


def _version_not_found(model_name: str, version: int) -> NotFound:
    return NotFound(f"model {model_name!r} has no version {version}; ListModelVersions shows them")
