//! Prometheus metrics, served at `GET /metrics`. Label values are script
//! names, error kinds and build outcomes only: no ids and no payload data,
//! so the number of series stays bounded by the number of scripts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::ErrorKind;

/// The outcome of a call whose caller disconnected before the reply.
pub const CANCELLED: &str = "cancelled";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptLabels {
    pub script: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub script: String,
    /// `ok`, or the error kind the call ended with.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// `built`, `cache_hit` or `failed`.
    pub outcome: String,
}

fn call_duration_histogram() -> Histogram {
    // 1 ms to about 131 s, doubling: covers warm calls and the 120 s timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub calls: Family<CallLabels, Counter>,
    pub call_duration: Family<ScriptLabels, Histogram, fn() -> Histogram>,
    pub cold_starts: Family<ScriptLabels, Counter>,
    pub builds: Family<BuildLabels, Counter>,
    pub instances: Family<ScriptLabels, Gauge>,
    pub queue_length: Family<ScriptLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kubefaas");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("calls", "Calls by script and outcome", calls.clone());
        let call_duration =
            Family::<ScriptLabels, Histogram, fn() -> Histogram>::new_with_constructor(call_duration_histogram);
        registry.register("call_duration_seconds", "Call duration from request to reply", call_duration.clone());
        let cold_starts = Family::<ScriptLabels, Counter>::default();
        registry.register("cold_starts", "Instances started for calls", cold_starts.clone());
        let builds = Family::<BuildLabels, Counter>::default();
        registry.register(
            "builds",
            "Build requests by outcome; cache_hit counts cache hits, built and failed count misses",
            builds.clone(),
        );
        let instances = Family::<ScriptLabels, Gauge>::default();
        registry.register("instances", "Running or starting instances", instances.clone());
        let queue_length = Family::<ScriptLabels, Gauge>::default();
        registry.register("queue_length", "Calls waiting for a free instance", queue_length.clone());
        Metrics { registry, calls, call_duration, cold_starts, builds, instances, queue_length }
    }

    /// Encodes every metric in the text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Removes every series of a deleted script.
    pub fn remove_script(&self, script: &str) {
        let outcomes = ["ok", CANCELLED].into_iter().chain(ErrorKind::ALL.iter().map(|kind| kind.as_str()));
        for outcome in outcomes {
            self.calls.remove(&CallLabels { script: script.to_string(), outcome: outcome.to_string() });
        }
        let labels = script_labels(script);
        self.call_duration.remove(&labels);
        self.cold_starts.remove(&labels);
        self.instances.remove(&labels);
        self.queue_length.remove(&labels);
    }

    pub fn record_build(&self, outcome: &str) {
        self.builds.get_or_create(&BuildLabels { outcome: outcome.to_string() }).inc();
    }
}

pub fn script_labels(script: &str) -> ScriptLabels {
    ScriptLabels { script: script.to_string() }
}
