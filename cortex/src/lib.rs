//! The QSC cortex: ingest, store, detect, score, decide, respond, audit.
