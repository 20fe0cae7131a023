//! Integration tests: the real `freezer` binary against a local repository and a real
//! Garage server (started by scripts/services). One test binary, many modules.

mod browse;
mod chunks;
mod codebase;
mod common;
mod completions;
mod compose;
mod copy;
mod database;
mod disk;
mod docker;
mod drill;
mod encryption;
mod excludes;
mod faults;
mod formats;
mod hooks;
mod hostile;
mod hydrated;
mod integrity;
mod killed;
mod monitor;
mod mount;
mod podman;
mod postgres;
mod project;
mod redis;
mod retention;
mod roundtrip;
mod servers;
mod sqlite;
mod status;
mod store;
mod tables;
