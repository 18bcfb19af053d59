//! The process metrics the original controller exposes (prom-client's
//! defaults, without the Node.js ones), read from `/proc/self` at each
//! scrape. Written here rather than taken from the prometheus crate's
//! `process` feature: that pulls in procfs, and lacks the user/system CPU
//! split the original has.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

pub struct ProcessCollector {
    cpu_user: Counter,
    cpu_system: Counter,
    cpu_total: Counter,
    start_time: Gauge,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    descs: Vec<Desc>,
}

/// What `/proc/self/stat` says, in the units the metrics use.
struct Stat {
    user_secs: f64,
    system_secs: f64,
    threads: f64,
    start_ticks: f64,
    virtual_bytes: f64,
    resident_pages: f64,
}

impl ProcessCollector {
    pub fn new() -> Result<ProcessCollector, prometheus::Error> {
        let counter = |name: &str, help: &str| Counter::with_opts(Opts::new(name, help));
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help));
        let c = ProcessCollector {
            cpu_user: counter("process_cpu_user_seconds_total", "User CPU time spent in seconds.")?,
            cpu_system: counter("process_cpu_system_seconds_total", "System CPU time spent in seconds.")?,
            cpu_total: counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )?,
            start_time: gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )?,
            resident: gauge("process_resident_memory_bytes", "Resident memory size in bytes.")?,
            virtual_memory: gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")?,
            open_fds: gauge("process_open_fds", "Number of open file descriptors.")?,
            max_fds: gauge("process_max_fds", "Maximum number of open file descriptors.")?,
            threads: gauge("process_threads", "Number of OS threads in the process.")?,
            descs: Vec::new(),
        };
        let descs = c.parts().iter().flat_map(|m| m.desc().into_iter().cloned()).collect();
        Ok(ProcessCollector { descs, ..c })
    }

    fn parts(&self) -> [&dyn Collector; 9] {
        [
            &self.cpu_user,
            &self.cpu_system,
            &self.cpu_total,
            &self.start_time,
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
        ]
    }

    fn update(&self) {
        if let Some(stat) = read_stat() {
            advance(&self.cpu_user, stat.user_secs);
            advance(&self.cpu_system, stat.system_secs);
            advance(&self.cpu_total, stat.user_secs + stat.system_secs);
            self.threads.set(stat.threads);
            self.virtual_memory.set(stat.virtual_bytes);
            self.resident.set(stat.resident_pages * page_size());
            if let Some(boot) = boot_time() {
                self.start_time.set(boot + stat.start_ticks / clock_ticks());
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            self.open_fds.set(dir.count().saturating_sub(1) as f64);
        }
        if let Some(max) = max_fds() {
            self.max_fds.set(max);
        }
    }
}

/// Counters only go up: add what the kernel's total has grown by.
fn advance(counter: &Counter, total: f64) {
    let delta = total - counter.get();
    if delta > 0.0 {
        counter.inc_by(delta);
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        self.parts().iter().flat_map(|m| m.collect()).collect()
    }
}

fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields are counted after its closing parenthesis, from field 3.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let ticks = clock_ticks();
    Some(Stat {
        user_secs: field(14)? / ticks,
        system_secs: field(15)? / ticks,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as f64
    } else {
        4096.0
    }
}

/// When the machine booted (epoch seconds): `btime` of `/proc/stat`.
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files.
fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let c = ProcessCollector::new().unwrap();
        let families = c.collect();
        let names: Vec<_> = families.iter().map(|f| f.name().to_string()).collect();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(c.resident.get() > 1_000_000.0);
        assert!(c.open_fds.get() >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = c.start_time.get();
        assert!(started > now - 86_400.0 && started <= now + 1.0, "{started} vs {now}");
    }
}
