//! Infra Controller: a Function-as-a-Service control plane.
//!
//! The module tree mirrors the architecture (see `README.md`):
//! `api` admits work, `backend` holds the storage/queue/bus traits and their
//! implementations, `worker` consumes jobs, `runtime` runs them in warm pools,
//! `function` is the one registration path, `app` wires it all together.

pub mod ai;
pub mod api;
pub mod app;
pub mod backend;
pub mod cli;
pub mod config;
pub mod function;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod runtime;
pub mod telemetry;
pub mod tls;
pub mod worker;
