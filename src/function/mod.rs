//! A function's life: validate settings (pure), package code into a
//! content-addressed artifact (pure), and the one service that stores both
//! (used by `/upload`, `PUT /functions/{id}` and the reconciler), with the
//! record cache of the request path.

pub mod cache;
pub mod package;
pub mod service;
pub mod settings;
pub mod stats;
pub mod style;
pub mod tuner;
pub mod usage;
pub mod warm_pool;

pub use package::{Artifact, PackageError};
pub use service::{FunctionService, ServiceError};
pub use settings::{FunctionSettings, SettingsDraft, ValidationErrors};
pub use warm_pool::{warm_pool_spec, WarmPoolSpec};
