//! Integration tests: real sockets, real Python processes, one data dir and
//! one port per test, so tests run in parallel.

mod ai;
mod api;
mod attacks;
mod binary;
mod cli;
mod compat;
mod compat_edge;
mod compat_wire;
mod conformance;
mod console;
mod examples;
mod folder;
mod helpers;
mod jobs;
mod manifests;
mod node;
mod operator;
mod pool;
mod production;
mod program;
mod runtime;
mod services;
mod tls;
