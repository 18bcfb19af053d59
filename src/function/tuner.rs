//! The "Smart Auto-Tuner" of the original worker: a memory recommendation
//! for a function from how much memory it really used. Pure logic, no I/O.
//!
//! The original's rules (contract section 6): below 30 % of the allocation
//! is waste (recommend twice the peak, at least 128 MB, the smallest allocation), above 85 % is a risk
//! (recommend 1.2 times the peak), in between there is no recommendation; a
//! saving is priced at $0.00005 per MB-hour over 730 hours a month. Unlike
//! the original, which judged one run, the peak judged here is the highest
//! among the function's recent runs: one light run must not talk a function
//! out of the memory its heavy runs need.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::model::AutoTunerAdvice;

/// Usage below this share of the allocation is waste.
pub const WASTE_RATIO: f64 = 0.30;
/// Usage above this share of the allocation risks running out.
pub const RISK_RATIO: f64 = 0.85;
/// Headroom over the peak when recommending less memory.
pub const WASTE_FACTOR: f64 = 2.0;
/// Headroom over the peak when recommending more memory.
pub const RISK_FACTOR: f64 = 1.2;
/// Never recommend less than this: the smallest allocation a function may
/// have here, so a recommendation can always be applied (the original's
/// floor was 32 MB, below its own 128 MB minimum).
pub const MIN_MEMORY_MB: u32 = crate::function::settings::MEMORY_MB_MIN;
/// Nor more than the largest allocation.
const MAX_MEMORY_MB: u32 = crate::function::settings::MEMORY_MB_MAX;
/// The original's price of one MB for one hour (its `COST_PER_MB_HOUR`).
pub const COST_PER_MB_HOUR: f64 = 0.00005;
const HOURS_PER_MONTH: f64 = 730.0;
/// How many recent runs of a function are judged together.
pub const WINDOW: usize = 20;
/// The original's allocation when none is known.
const DEFAULT_ALLOCATION_MB: u32 = 128;

/// CPU time against the handler's time, for the CPU half of the tip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSample {
    /// Percent of one core (CPU time / wall time * 100).
    pub usage_percent: f64,
    pub duration_ms: f64,
}

const MB: f64 = 1024.0 * 1024.0;

/// The advice for a function allocated `allocated_mb` whose recent runs
/// peaked at `peaks_bytes` (0 = not measured, ignored), with the CPU use
/// of the latest run when known.
pub fn analyze(allocated_mb: u32, peaks_bytes: &[u64], cpu: Option<CpuSample>) -> AutoTunerAdvice {
    let measured: Vec<u64> = peaks_bytes.iter().copied().filter(|p| *p > 0).collect();
    let Some(&peak) = measured.iter().max() else {
        return AutoTunerAdvice::default();
    };
    let allocated = if allocated_mb == 0 {
        DEFAULT_ALLOCATION_MB
    } else {
        allocated_mb
    };
    let alloc = f64::from(allocated);
    let peak_mb = peak as f64 / MB;
    let ratio = peak_mb / alloc;
    let runs = measured.len();
    let over = if runs == 1 {
        "the last run".to_string()
    } else {
        format!("the last {runs} runs")
    };
    let (recommended, memory_tip) = if ratio < WASTE_RATIO {
        let rec = ((peak_mb * WASTE_FACTOR) as u32).max(MIN_MEMORY_MB);
        let tip = (rec < allocated).then(|| {
            let save = ((1.0 - f64::from(rec) / alloc) * 100.0) as u32;
            format!(
                "Resource waste: peak usage over {over} ({} MB) is low. Reduce to {rec} MB to save {save}%.",
                peak_mb as u32
            )
        });
        (Some(rec), tip)
    } else if ratio > RISK_RATIO {
        let rec = ((peak_mb * RISK_FACTOR) as u32).clamp(MIN_MEMORY_MB, MAX_MEMORY_MB);
        let tip = format!(
            "Memory risk: peak usage over {over} ({} MB) is dangerously high ({}% of {allocated} MB). Increase to {rec} MB.",
            peak_mb as u32,
            (ratio * 100.0) as u32
        );
        (Some(rec), Some(tip))
    } else {
        (None, None)
    };
    let cpu_tip = cpu.and_then(|c| {
        if c.usage_percent > 80.0 {
            Some("CPU bound: high computation load. More memory (which brings more CPU) may make it faster.")
        } else if c.usage_percent < 20.0 && c.duration_ms > 500.0 {
            Some("I/O bound: low CPU but slow execution. Waiting on external latency?")
        } else {
            None
        }
    });
    let tip = match (memory_tip, cpu_tip) {
        (Some(m), Some(c)) => Some(format!("{m} | {c}")),
        (Some(m), None) => Some(m),
        (None, Some(c)) => Some(c.to_string()),
        (None, None) => None,
    };
    let estimated_savings = recommended.filter(|rec| *rec < allocated).map(|rec| {
        format!(
            "${:.2}/month",
            f64::from(allocated - rec) * COST_PER_MB_HOUR * HOURS_PER_MONTH
        )
    });
    AutoTunerAdvice {
        recommended_memory_mb: recommended,
        estimated_savings,
        tip,
        peak_memory_mb: (peak_mb * 100.0).round() / 100.0,
        based_on_runs: runs,
    }
}

/// Most functions a window keeps; beyond it, it starts over (a worker sees
/// far fewer functions; this only bounds memory).
const MAX_FUNCTIONS: usize = 10_000;

/// The recent peaks of each function a worker ran (its own runs only).
#[derive(Default)]
pub struct PeakWindow {
    peaks: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl PeakWindow {
    /// Records a run's peak (0, not measured, is not recorded) and returns
    /// the function's recent peaks, oldest first.
    pub fn record(&self, function_id: &str, peak_bytes: u64) -> Vec<u64> {
        let Ok(mut all) = self.peaks.lock() else {
            return vec![peak_bytes];
        };
        if peak_bytes > 0 {
            if all.len() >= MAX_FUNCTIONS && !all.contains_key(function_id) {
                all.clear();
            }
            let window = all.entry(function_id.to_string()).or_default();
            if window.len() == WINDOW {
                window.pop_front();
            }
            window.push_back(peak_bytes);
        }
        all.get(function_id)
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1024 * 1024;

    #[test]
    fn nothing_measured_means_no_advice() {
        let a = analyze(128, &[0, 0], None);
        assert_eq!(a, AutoTunerAdvice::default());
        assert_eq!(analyze(128, &[], None).based_on_runs, 0);
    }

    #[test]
    fn waste_recommends_twice_the_peak_with_savings() {
        let a = analyze(1024, &[100 * M], None);
        assert_eq!(a.recommended_memory_mb, Some(200));
        // (1024 - 200) * 0.00005 * 730 = 30.076
        assert_eq!(a.estimated_savings.as_deref(), Some("$30.08/month"));
        let tip = a.tip.unwrap();
        assert!(tip.starts_with("Resource waste"), "{tip}");
        assert!(tip.contains("Reduce to 200 MB to save 80%"), "{tip}");
        assert_eq!(a.based_on_runs, 1);
    }

    #[test]
    fn waste_never_goes_below_what_can_be_allocated() {
        let a = analyze(256, &[20 * M], None);
        assert_eq!(a.recommended_memory_mb, Some(MIN_MEMORY_MB));
        // (256 - 128) * 0.00005 * 730 = 4.672
        assert_eq!(a.estimated_savings.as_deref(), Some("$4.67/month"));
        assert!(a.tip.unwrap().contains("Reduce to 128 MB"));
    }

    #[test]
    fn a_waste_recommendation_not_below_the_allocation_has_no_tip_or_saving() {
        // 5 MB of 128 MB is 4 %: waste, but 128 MB is already the floor.
        let a = analyze(128, &[5 * M], None);
        assert_eq!(a.recommended_memory_mb, Some(128));
        assert_eq!(a.tip, None);
        assert_eq!(a.estimated_savings, None);
    }

    #[test]
    fn risk_recommends_more() {
        let a = analyze(128, &[120 * M], None);
        assert_eq!(a.recommended_memory_mb, Some(144));
        assert_eq!(a.estimated_savings, None);
        let tip = a.tip.unwrap();
        assert!(tip.starts_with("Memory risk"), "{tip}");
        assert!(tip.contains("(93% of 128 MB)"), "{tip}");
    }

    #[test]
    fn the_comfortable_band_has_no_recommendation() {
        let a = analyze(128, &[64 * M], None);
        assert_eq!(a.recommended_memory_mb, None);
        assert_eq!(a.tip, None);
        assert_eq!(a.peak_memory_mb, 64.0);
    }

    #[test]
    fn the_highest_recent_peak_decides() {
        // One light run among heavy ones is no reason to cut memory.
        let a = analyze(128, &[10 * M, 100 * M, 12 * M], None);
        assert_eq!(a.recommended_memory_mb, None);
        assert_eq!(a.based_on_runs, 3);
        assert_eq!(analyze(128, &[10 * M, 0, 12 * M], None).based_on_runs, 2);
    }

    #[test]
    fn cpu_tips_join_the_memory_tip_or_stand_alone() {
        let busy = CpuSample {
            usage_percent: 95.0,
            duration_ms: 100.0,
        };
        let a = analyze(256, &[20 * M], Some(busy));
        assert!(a.tip.unwrap().contains(" | CPU bound"));
        let a = analyze(128, &[64 * M], Some(busy));
        assert!(a.tip.unwrap().starts_with("CPU bound"));
        let idle = CpuSample {
            usage_percent: 1.0,
            duration_ms: 2000.0,
        };
        assert!(analyze(128, &[64 * M], Some(idle))
            .tip
            .unwrap()
            .starts_with("I/O bound"));
        let quick = CpuSample {
            usage_percent: 1.0,
            duration_ms: 10.0,
        };
        assert_eq!(analyze(128, &[64 * M], Some(quick)).tip, None);
    }

    #[test]
    fn an_unknown_allocation_counts_as_128() {
        assert_eq!(analyze(0, &[120 * M], None).recommended_memory_mb, Some(144));
    }

    #[test]
    fn the_window_keeps_the_latest_runs_per_function() {
        let w = PeakWindow::default();
        for i in 1..=(WINDOW as u64 + 5) {
            w.record("f", i);
        }
        let peaks = w.record("f", 0);
        assert_eq!(peaks.len(), WINDOW);
        assert_eq!(peaks[0], 6);
        assert_eq!(w.record("g", 0), Vec::<u64>::new());
        assert_eq!(w.record("g", 7), vec![7]);
    }
}
