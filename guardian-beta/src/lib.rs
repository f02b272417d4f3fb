//! Guardian-Beta: config, backup and certificate integrity with a signed baseline and auto-heal.
