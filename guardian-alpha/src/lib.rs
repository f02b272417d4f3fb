//! Guardian-Alpha agent library.
