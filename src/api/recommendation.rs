//! `GET /functions/{id}/recommendation`: the auto-tuner's memory advice for
//! a function, from the peaks of its recent runs in the invocation logs
//! (what `/api/functions/{id}/logs` lists; every worker writes there), so
//! it covers the runs of every worker, unlike the advice on one result,
//! which a worker makes from its own runs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::ApiState;
use crate::function::tuner;

/// A function's memory recommendation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    pub function_id: String,
    /// The function's `memoryMb` now.
    pub allocated_memory_mb: u32,
    /// What to set `memoryMb` to; null when the usage is in the comfortable
    /// band (30 % to 85 % of the allocation) or nothing was measured.
    pub recommended_memory_mb: Option<u32>,
    /// E.g. `"$0.16/month"`, when the recommendation is below the allocation.
    pub estimated_savings: Option<String>,
    /// One line saying why.
    pub tip: Option<String>,
    /// Recent runs with a measured peak that the advice is based on
    /// (0 without invocation logs, or before the first run).
    pub based_on_runs: usize,
    /// The highest of those peaks, in MB (null without runs).
    pub peak_memory_mb: Option<f64>,
    /// Their average, in MB (null without runs).
    pub average_peak_memory_mb: Option<f64>,
}

/// The auto-tuner's memory recommendation for a function, from the peak
/// memory of its last runs (up to 20, from the invocation logs). Never
/// applied by itself: set it with `PUT /functions/{id}` `{"memoryMb": …}`.
#[utoipa::path(
    get, path = "/functions/{id}/recommendation", tag = "functions",
    params(("id" = String, Path, description = "Function id")),
    responses(
        (status = 200, body = Recommendation),
        (status = 404, description = "No such function", body = super::ErrorBody),
    )
)]
pub async fn recommendation(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Recommendation>, ApiError> {
    let function = state.functions.fetch(&id).await?;
    let peaks: Vec<u64> = match &state.logs {
        Some(logs) => logs
            .list(&function.function_id, tuner::WINDOW)
            .await?
            .iter()
            .map(|e| e.peak_memory_bytes)
            .filter(|p| *p > 0)
            .collect(),
        None => Vec::new(),
    };
    let advice = tuner::analyze(function.memory_mb, &peaks, None);
    let mb = |bytes: f64| (bytes / (1024.0 * 1024.0) * 100.0).round() / 100.0;
    let average = (!peaks.is_empty()).then(|| mb(peaks.iter().sum::<u64>() as f64 / peaks.len() as f64));
    Ok(Json(Recommendation {
        function_id: function.function_id,
        allocated_memory_mb: function.memory_mb,
        recommended_memory_mb: advice.recommended_memory_mb,
        estimated_savings: advice.estimated_savings,
        tip: advice.tip,
        based_on_runs: advice.based_on_runs,
        peak_memory_mb: (advice.based_on_runs > 0).then_some(advice.peak_memory_mb),
        average_peak_memory_mb: average,
    }))
}
