"""The pipeline: enrich -> filter -> redact -> validate -> batch -> spool.

``processors`` holds the chain and its processors, ``redact`` the redaction, ``batcher`` the
lanes' buffering and spool writes (``lanes``: what a lane holds), ``encode`` the one fast path
hot sources take to finished event JSON.
"""
