//! Records shared by the guardian-alpha kernel program and its userspace agent.
#![no_std]
