//! The Kubernetes operator: `Function` resources reconciled into an artifact,
//! a registry record and the warm-pool spec, through the same
//! `FunctionService` as `/upload`.
//!
//! `desired` is pure (spec → settings, outcome → status), `reconciler` is the
//! core shared with `infra up --functions DIR` (`folder`), `controller` is
//! the kube-runtime side (finalizer, status, events, backoff).

pub mod controller;
pub mod crd;
pub mod desired;
pub mod folder;
pub mod leader;
pub mod reconciler;

pub use crd::{Function, FunctionSpec, FunctionStatus};
pub use reconciler::{Reconciler, Sources};
