//! Counts for a benchmark run: the full plan, and the quick plan, which
//! keeps every step but uses tiny counts.

use std::path::PathBuf;

/// Counts for one benchmark run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Repeats of the warm call, build, scale and burst measurements.
    pub runs: usize,
    /// Calls per run at each concurrency level, after a short warm-up.
    pub warm_calls: usize,
    pub warm_concurrency: Vec<usize>,
    /// Instances on both sides of the warm call comparison.
    pub warm_instances: usize,
    /// Scale-from-zero starts per language.
    pub cold_runs: usize,
    pub build_runs: usize,
    /// Registered scripts on each of the scale servers; the first is the baseline.
    pub scale_levels: Vec<usize>,
    pub scale_calls: usize,
    pub upload_bytes: u64,
    pub upload_runs: usize,
    pub burst_calls: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            runs: 7,
            warm_calls: 4000,
            warm_concurrency: vec![1, 8, 64],
            warm_instances: 4,
            cold_runs: 20,
            build_runs: 10,
            scale_levels: vec![10, 1_000, 10_000],
            scale_calls: 2000,
            upload_bytes: 4_000_000_000,
            upload_runs: 3,
            burst_calls: 200,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            runs: 2,
            warm_calls: 100,
            warm_concurrency: vec![1, 8, 64],
            warm_instances: 4,
            cold_runs: 2,
            build_runs: 2,
            scale_levels: vec![10, 20, 40],
            scale_calls: 50,
            upload_bytes: 16 * 1024 * 1024,
            upload_runs: 1,
            burst_calls: 40,
        }
    }
}

/// The programs a run uses, found once at the start.
pub struct Tools {
    pub server: PathBuf,
    /// The real Python executable (`sys.executable`), not a wrapper such as
    /// pyenv's shim, which adds its own start time.
    pub python: PathBuf,
    /// The Node executable, or why Node rows are skipped.
    pub node: Result<PathBuf, String>,
    /// The nginx executable, or why the nginx rows are skipped.
    pub nginx: Result<PathBuf, String>,
}
