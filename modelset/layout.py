"""The layout of an output location: every name a run reads or writes there, defined once.

A location is a folder or a bucket prefix (``s3://``, ``gs://``, ``az://``); a name here is
a key below it, ``/``-separated on both. Locations written by earlier versions are read
as they are, so a name here never changes.

```
<location>/
  manifest.jsonl  manifest.csv        MANIFEST_JSONL, MANIFEST_CSV: one row per photo+template
  index.html                          INDEX_HTML: the contact sheet
  <item>/<template_id>/<n>.jpg        the generated sets
  <item>/<template_id>/.task_id       TASK_MARKER: the task that made the set
  published/<item>/<template_id>/     PUBLISHED: the approved sets (review), each complete
                                      once its published.json (PUBLISHED_MARKER) is there
  .modelset/                          STATE_DIR: what later runs and other workers read back
    ledger/<key>.json                 LEDGER: the exactly-once record of each photo+template
    ledger/<key>.lease                a bucket's claim (a folder: <key>.lock and flock)
    ledger/by-task/<task_id>/<key>-<template_id>-v1-<look>
                                      LEDGER_BY_TASK: the key that paid for a task, and what
                                      its upload looks like (before looks: by-task/<task_id>)
    ledger/by-upload/<hash>           LEDGER_BY_UPLOAD: the key that paid for an upload
    ledger-digest.gz                  LEDGER_DIGEST: the records as runs last saw them
    locks/                            LOCKS: a folder's compare-and-swap lock files (no objects)
    probe/<uuid>                      PROBE: the conditional-write probe, deleted at once
    budget/<day or month>.json        BUDGET: the images spent in one period
    lookup-proofs/<base URL hash>.json  LOOKUP_PROOFS: whether lookups by request_id work
    prefect-results/                  PREFECT_RESULTS: Prefect's cached stage results
    uploads/<sha256>-<policy>-v<n>.jpg  UPLOADS: the prepared uploads (what is sent)
    thumbs/<sha256>.jpg               THUMBS: input thumbnails
    thumbs/<item>/<template_id>/thumbnails.json
                                      SET_THUMBNAILS: on a bucket, a set's image thumbnails
                                      (older locations: thumbs/<item>/<template_id>/<n>.jpg)
    summary-thumbnails.json           SUMMARY_THUMBNAILS: on a bucket, the last summary's JPEGs
    report-views.sha256               REPORT_VIEWS: the manifest the CSV and sheet show
    passed-over.json                  PASSED_OVER: what the last scan did not take
    review/sets/<ledger key>/<attempt>.json   REVIEW_SETS: a set's review decision
    review/waiting/<flow run id>.json         REVIEW_WAITING: a run suspended for review
    shards/<parent run>/              SHARDS: a sharded run's manifests (<n>.jsonl), its
                                      SHARD_BUDGET and its SHARD_ACCOUNT_ERROR
    inbox-seen.json                   INBOX_SEEN: what the nightly inbox scan finished with
    fetched/                          SCRATCH_FETCHED (see below)
```

A run's scratch folder holds what only this machine needs: ``SCRATCH_FETCHED`` (copies of
remote sources), ``SCRATCH_UPLOADS`` (a bucket's uploads, copied to be sent) and
``SCRATCH_KEPT`` (a bucket run's thumbnails, so the report need not read them back). On
a folder the scratch folder is ``STATE_DIR`` itself, so its uploads are ``UPLOADS``; on
a bucket it is a temporary folder, removed when the run ends.

This module imports nothing of the project: every layer may import it.
"""

MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
INDEX_HTML = "index.html"
TASK_MARKER = ".task_id"
PUBLISHED = "published"
PUBLISHED_MARKER = "published.json"

STATE_DIR = ".modelset"
LEDGER = f"{STATE_DIR}/ledger"
LEDGER_BY_TASK = f"{LEDGER}/by-task"
LEDGER_BY_UPLOAD = f"{LEDGER}/by-upload"
LEDGER_DIGEST = f"{STATE_DIR}/ledger-digest.gz"
LOCKS = f"{STATE_DIR}/locks"
PROBE = f"{STATE_DIR}/probe"
BUDGET = f"{STATE_DIR}/budget"
LOOKUP_PROOFS = f"{STATE_DIR}/lookup-proofs"
PREFECT_RESULTS = f"{STATE_DIR}/prefect-results"
UPLOADS = f"{STATE_DIR}/uploads"
THUMBS = f"{STATE_DIR}/thumbs"
SET_THUMBNAILS = "thumbnails.json"
SUMMARY_THUMBNAILS = f"{STATE_DIR}/summary-thumbnails.json"
REPORT_VIEWS = f"{STATE_DIR}/report-views.sha256"
PASSED_OVER = f"{STATE_DIR}/passed-over.json"
REVIEW_SETS = f"{STATE_DIR}/review/sets"
REVIEW_WAITING = f"{STATE_DIR}/review/waiting"
SHARDS = f"{STATE_DIR}/shards"
SHARD_BUDGET = "budget.json"
SHARD_ACCOUNT_ERROR = "account-error.txt"
INBOX_SEEN = f"{STATE_DIR}/inbox-seen.json"

SCRATCH_FETCHED = "fetched"
SCRATCH_UPLOADS = "uploads"
SCRATCH_KEPT = "kept"
