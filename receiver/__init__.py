"""Reference workspace-backend ingest for alpacon-agent: the receiver tests and demos ship to.

Run it::

    alpacon-agent-receiver --listen 127.0.0.1:8765 --token-file TOKEN [--db receiver.db]
    alpacon-agent-receiver … --db postgresql://USER@HOST/DB [--retention-days N] [--consume nats://HOST:4222]

It prints ``listening on http://HOST:PORT`` once it accepts connections (``--listen
127.0.0.1:0`` picks a free port and prints it). Without ``--db`` it uses a temporary file
removed at exit. Without a token every request is accepted (a warning is logged).

Ingest (wire protocol v1, DESIGN.md)
    ``POST /api/v1/agent/events`` with ``Authorization: Bearer <token>`` (401 otherwise),
    ``Content-Type: application/json`` (415 otherwise), ``Content-Encoding: gzip`` or identity
    (415 for others). The body is inflated incrementally with caps on the sent and the inflated
    size (413 above ``--max-compressed-bytes`` / ``--max-body-bytes``, 32 MiB each by default),
    parsed with orjson (400 if not JSON) and validated against ``agent/schema/batch.schema.json``
    (400 ``{"error": "schema: events[3]: command: data must contain ['status'] …"}``). Events
    are stored in SQLite (WAL), or in PostgreSQL (day partitions shared by any number of receivers),
    with ``id`` unique, one transaction per batch, so a replay is
    stored once and counted as duplicates: the answer is 200 ``{"stored": N, "duplicates": M}``.
    The batch id and ``Idempotency-Key`` of every accepted request are recorded.

Views (``GET``, bearer token required, JSON ``{"view", "items", "count", "next_after"}``)
    ``/api/v1/system-logs``, ``/websh-sessions``, ``/webftp-transfers``, ``/commands``,
    ``/user-activity``, ``/metrics``. Common filters: ``server``, ``since``, ``until`` (RFC 3339
    or epoch seconds; ``since <= ts < until``), ``limit`` (default 1000, at most 100000),
    ``after`` (a ``received_seq`` to page from). Kind-specific filters: see
    :data:`receiver.views.VIEWS` (``program``, ``level``, ``q`` for system logs; ``username``,
    ``state`` for sessions; ``status``, ``shell``, ``operator`` for commands …); an unknown
    parameter is a 400 naming it. Rows come in arrival order; each carries ``received_seq``.
    A Websh session is its open/closed events merged (closed wins) with ``commands``: its
    ``websh_command`` events ordered by ``seq``. A command is its status events merged, the
    latest status winning, with ``history``: every status change in order.

For tests
    ``GET /api/v1/events?kind=&server=&since=&until=&after=&limit=`` raw events with their
    receive ``seq``; ``GET /api/v1/ids?kind=&after=&limit=`` stored ids in arrival order, paged;
    ``GET /api/v1/batches`` batch receipts; ``GET /api/v1/stats`` stored per kind, duplicates,
    batches accepted, ingest requests by status (``"dropped"`` for dropped connections), faults
    injected, bytes, ingest rate and CPU seconds; ``GET /healthz`` (no token).

Faults (flags at start, ``POST /api/v1/_faults`` with a JSON object at run time)
    ``error_rate`` (503, or ``error_status``), ``throttle_rate`` (429 + ``Retry-After:
    retry_after``), ``slow_rate`` + ``slow_ms``, ``drop_rate`` (connection closed without an
    answer), ``force_status`` (every request, until set to null), ``fail_after_store_rate``
    (stored, then answered 503: causes replays), ``script`` (exact outcomes for the next
    requests: ``[503, "drop", 429, "slow", "fail_after_store", "ok"]``), ``seed``, and the body
    caps. ``{"reset": true}`` restores the start settings. Faults other than fail-after-store
    answer before anything is stored.

Stream (``--consume``)
    pulls the agents' JetStream stream (``--stream``, default ``ALPACON``) through a durable
    consumer shared by every receiver with the same ``--consumer-name``; acks after commit;
    invalid messages are terminated and counted (see :mod:`receiver.consumer`, docs/fleet.md).

``--mode count`` is a benchmark sink: it inflates, parses and counts events per kind and
duplicate ids, and tracks ``seq=N`` (optionally ``src=NAME seq=N``) found in event messages per
source (gaps, duplicates, out-of-order) without SQLite; see ``/api/v1/stats``.
"""
