//! A function's recent figures — a summary and a per-interval series of runs,
//! errors, duration percentiles and cold vs warm starts — computed from its
//! invocation logs. Pure: the console's charts and the functions list read
//! them through `GET /functions/{id}/stats`.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{JobStatus, LogEntry};

/// Figures over the runs that finished within the window.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStats {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket_seconds: u32,
    /// Runs of the window among the entries given (the API gives the newest
    /// 1,000 logged runs).
    pub runs: u64,
    /// False when the entries may not reach back to `from` (as many as the
    /// limit were given, and the oldest is inside the window): the figures
    /// then cover only the newest runs.
    pub complete: bool,
    /// Runs whose status is not SUCCESS.
    pub errors: u64,
    /// `errors / runs`; 0 without runs.
    pub error_rate: f64,
    pub cold_starts: u64,
    /// `coldStarts / runs`; 0 without runs.
    pub cold_share: f64,
    /// Duration percentiles (nearest rank, ms); null without runs.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// One point per interval, oldest first, empty intervals included.
    pub series: Vec<StatsPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsPoint {
    /// The interval's start.
    pub at: DateTime<Utc>,
    pub runs: u64,
    pub errors: u64,
    pub cold: u64,
    pub warm: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The window and interval a caller may ask for.
pub const MAX_WINDOW_MINUTES: u32 = 24 * 60;
/// At most this many points, so a day's window is not 86,400 of them.
pub const MAX_POINTS: i64 = 360;

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Default)]
struct Tally {
    durations: Vec<f64>,
    errors: u64,
    cold: u64,
}

impl Tally {
    fn add(&mut self, e: &LogEntry) {
        self.durations.push(e.duration_ms.max(0.0));
        if e.status != JobStatus::Success {
            self.errors += 1;
        }
        if e.cold_start {
            self.cold += 1;
        }
    }

    fn percentiles(&mut self) -> (Option<f64>, Option<f64>) {
        self.durations.sort_by(f64::total_cmp);
        (percentile(&self.durations, 50.0), percentile(&self.durations, 99.0))
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The interval for a window: a whole number of seconds, at least 10, with
/// at most `MAX_POINTS` intervals.
pub fn bucket_for(window: Duration) -> Duration {
    let secs = (window.num_seconds() + MAX_POINTS - 1) / MAX_POINTS;
    Duration::seconds(secs.max(10))
}

/// The figures of `entries` that finished in `(now - window, now]`, in
/// intervals of `bucket` aligned to whole multiples of it since the epoch.
pub fn compute(
    entries: &[LogEntry],
    limit: usize,
    now: DateTime<Utc>,
    window: Duration,
    bucket: Duration,
) -> FunctionStats {
    let step = bucket.num_seconds().max(1);
    let from = now - window;
    let first = from.timestamp().div_euclid(step) * step;
    let last = now.timestamp().div_euclid(step) * step;
    let count = ((last - first) / step + 1) as usize;
    let mut buckets: Vec<Tally> = (0..count).map(|_| Tally::default()).collect();
    let mut all = Tally::default();
    for e in entries.iter().filter(|e| e.finished_at > from && e.finished_at <= now) {
        let i = ((e.finished_at.timestamp().div_euclid(step) * step - first) / step) as usize;
        if let Some(b) = buckets.get_mut(i) {
            b.add(e);
        }
        all.add(e);
    }
    let series = buckets
        .into_iter()
        .enumerate()
        .map(|(i, mut b)| {
            let (p50_ms, p99_ms) = b.percentiles();
            let runs = b.durations.len() as u64;
            StatsPoint {
                at: DateTime::from_timestamp(first + i as i64 * step, 0).unwrap_or(from),
                runs,
                errors: b.errors,
                cold: b.cold,
                warm: runs - b.cold,
                p50_ms,
                p99_ms,
            }
        })
        .collect();
    let (p50_ms, p99_ms) = all.percentiles();
    let runs = all.durations.len() as u64;
    let complete = entries.len() < limit || entries.iter().map(|e| e.finished_at).min().is_some_and(|t| t <= from);
    FunctionStats {
        complete,
        from,
        to: now,
        bucket_seconds: step as u32,
        runs,
        errors: all.errors,
        error_rate: ratio(all.errors, runs),
        cold_starts: all.cold,
        cold_share: ratio(all.cold, runs),
        p50_ms,
        p99_ms,
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: DateTime<Utc>, ms: f64, status: JobStatus, cold: bool) -> LogEntry {
        LogEntry {
            function_id: "f".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            status,
            stdout: String::new(),
            stderr: String::new(),
            error: None,
            duration_ms: ms,
            handler_duration_ms: None,
            peak_memory_bytes: 0,
            cold_start: cold,
            attempt: 1,
            finished_at: at,
            truncated: false,
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn runs_fall_into_aligned_intervals_and_old_ones_are_left_out() {
        // now = t(600): a 10-minute window of 60 s intervals starts at t(0).
        let logs = vec![
            entry(t(-5), 1000.0, JobStatus::Success, true), // before the window
            entry(t(10), 10.0, JobStatus::Success, true),
            entry(t(20), 30.0, JobStatus::Error, false),
            entry(t(125), 5.0, JobStatus::Timeout, false),
            entry(t(599), 7.0, JobStatus::Success, false),
            entry(t(700), 1.0, JobStatus::Success, false), // after now
        ];
        let s = compute(&logs, 100, t(600), Duration::minutes(10), Duration::seconds(60));
        assert_eq!(s.bucket_seconds, 60);
        assert!(s.complete);
        assert_eq!((s.runs, s.errors, s.cold_starts), (4, 2, 1));
        assert_eq!(s.error_rate, 0.5);
        assert_eq!(s.cold_share, 0.25);
        assert_eq!((s.p50_ms, s.p99_ms), (Some(7.0), Some(30.0)));
        assert_eq!(s.series.len(), 11, "t(0)..=t(600) in steps of 60");
        assert_eq!(s.series[0].at, t(0) - Duration::seconds(t(0).timestamp() % 60));
        let busy: Vec<(u64, u64, u64, u64)> = s
            .series
            .iter()
            .filter(|p| p.runs > 0)
            .map(|p| (p.runs, p.errors, p.cold, p.warm))
            .collect();
        assert_eq!(busy.len(), 3);
        assert_eq!(busy.iter().map(|b| b.0).sum::<u64>(), 4);
        let first = s.series.iter().find(|p| p.runs == 2).unwrap();
        assert_eq!((first.errors, first.cold, first.warm), (1, 1, 1));
        assert_eq!((first.p50_ms, first.p99_ms), (Some(10.0), Some(30.0)));
        assert!(s.series.iter().filter(|p| p.runs == 0).all(|p| p.p50_ms.is_none()));
    }

    #[test]
    fn no_runs_no_figures() {
        let s = compute(&[], 100, t(0), Duration::minutes(60), bucket_for(Duration::minutes(60)));
        assert_eq!((s.runs, s.error_rate, s.cold_share, s.p50_ms), (0, 0.0, 0.0, None));
        assert!(s.series.iter().all(|p| p.runs == 0));
    }

    #[test]
    fn figures_from_the_newest_runs_only_say_so() {
        let logs: Vec<LogEntry> = (0..3)
            .map(|i| entry(t(100 + i), 1.0, JobStatus::Success, false))
            .collect();
        let window = Duration::minutes(10);
        assert!(
            !compute(&logs, 3, t(600), window, Duration::seconds(60)).complete,
            "the limit was reached inside the window"
        );
        assert!(
            compute(&logs, 4, t(600), window, Duration::seconds(60)).complete,
            "fewer than the limit: all there is"
        );
        assert!(
            compute(&logs, 3, t(200), Duration::seconds(60), Duration::seconds(10)).complete,
            "the oldest is before the window"
        );
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(bucket_for(Duration::minutes(60)), Duration::seconds(10));
        let day = Duration::minutes(MAX_WINDOW_MINUTES as i64);
        let b = bucket_for(day);
        assert_eq!(b, Duration::seconds(240));
        let s = compute(&[], 100, t(0), day, b);
        assert!(s.series.len() as i64 <= MAX_POINTS + 1);
    }
}
