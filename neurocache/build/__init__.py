"""``neurocache build``: a data folder -> a complete store, in parallel, resumable and incremental.

Phases (each task writes whole shards, so parallel writes never collide):

1. **decode** — the files, sorted by ID, are cut into batches (a divisor of ``shard_size`` files,
   :func:`plan.batch_size`); each task reads and preprocesses one batch, writes its images into the
   ``_staging`` array (one shard file per batch, made in one pass: :mod:`neurocache.shards`) and then
   its feature rows into ``_progress/batch_NNNNNN.parquet`` (temp file + rename: the task's commit
   record). A batch whose progress file exists is done: a build killed at any point and rerun with
   the same command continues from there.
2. **compact** — the client copies the ``ok`` slices into ``images`` (rows ordered by ID) as encoded
   bytes, never decoding them: a staging shard whose rows land 1:1 on an ``images`` shard is linked
   (or copied) whole, other ``images`` shards are assembled from the staging shards' chunks
   (:mod:`.compact`). It then writes ``features.parquet`` and ``quality.json``, writes
   ``complete: true`` last, then removes the staging data. A store is never marked complete before
   all of its data is written.

**Incremental builds.** When the store is complete with the same preprocessing fingerprint, hash key
and package version but the folder changed (files added, removed, replaced, or the labels CSV
edited), the old ``images`` and ``features.parquet`` stay in place as a *reuse source* while the
new build stages: a file whose name and content hash (BLAKE3) match an old row is not decoded
again — its feature row and image are copied from the old store. The result is identical to a
from-scratch build; ``attrs["build"]`` reports ``decoded`` and ``reused``. Before compaction
overwrites ``images`` the reuse source is declared invalid in the attrs, so a later kill never
reuses half-written data.

**Where it runs.** Tasks run in this process (``workers=1``), on ``workers=N`` local processes
forked from a forkserver that imported this package once (no cluster to start and stop, and a codec
crash still costs only its worker), or on an existing dask.distributed cluster (``scheduler=``: a ``tcp://`` address or a scheduler
file). A task writes its shard straight into the store and sends back only its feature rows (the
Parquet bytes of its commit record, a few kB); the client assembles the table from those, writes
``features.parquet`` and ``quality.json`` and marks the store complete. The store may be a folder
the workers see, or an fsspec URL (``s3://bucket/store.zarr``) — see :mod:`neurocache.remote`.

**Modules.** :mod:`.plan` decides fresh / resume / incremental / no-op from the store's attrs and
the input manifest (pure); :mod:`.state` names the build's members and reads the facts the plan
needs; :mod:`.tasks` is the decode task; :mod:`.run` runs the tasks (:mod:`neurocache.execution`);
:mod:`.labels` joins the labels; :mod:`.compact` copies the ok slices into ``images``;
:mod:`.pipeline` is :func:`build_store`, in that order; :mod:`.hooks` are the points where the
tests inject faults.
"""

from neurocache.build.hooks import BuildHooks
from neurocache.build.pipeline import build_store
from neurocache.build.plan import BuildPlan, StoreFacts, manifest_digest, plan
from neurocache.build.state import (
    PROGRESS,
    STAGING,
    STORE_MEMBERS,
    BuildError,
    BuildResult,
)

__all__ = [
    "PROGRESS", "STAGING", "STORE_MEMBERS", "BuildError", "BuildHooks", "BuildPlan", "BuildResult", "StoreFacts",
    "build_store", "manifest_digest", "plan",
]
