//! Prometheus metrics. Each worker counts into a shard of its own (plain atomics, no cache line
//! shared with another core, no label lookup per request); a scrape sums the shards and
//! encodes them with prometheus-client. Label values are bounded by the config: route paths,
//! policy and limit names, upstream names, known methods and status codes — never a client key
//! or a raw path.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::idempotency::Outcome;
use crate::limiter::{CALL_BUCKETS, Health, LimitKind};
use crate::problem::UpstreamFault;

/// Method label values; anything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
/// Status codes 100 to 599, one counter each.
const STATUSES: usize = 500;
/// Limiter outcomes per limit.
const DECISIONS: [&str; 3] = ["allowed", "refused", "shadow_refused"];
/// Upper bounds of the upstream latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Upstream error kinds, one counter each.
const ERRORS: usize = UpstreamFault::ALL.len();
/// Statuses 500 to 599, for the 5xx answers sluice gave itself.
const OWN_ERRORS: usize = 100;

/// A limiter outcome, for `sluice_limiter_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Allowed = 0,
    Refused = 1,
    ShadowRefused = 2,
}

/// Every metric of one config generation: the label values, one shard per worker, and what
/// earlier generations counted under the same labels.
#[derive(Debug)]
pub struct Metrics {
    routes: Vec<String>,
    route_upstream: Vec<String>,
    limits: Vec<(String, String)>,
    /// The algorithm behind each of `limits` (`None` for a one-limit policy's unused place):
    /// a reload that gives a label to another algorithm does not carry its counts.
    limit_kinds: Vec<Option<LimitKind>>,
    upstreams: Vec<String>,
    shards: Box<[Shard]>,
    /// Per family, laid out like a shard's: the counts of the generations before this one, so
    /// that a counter carries on across a reload rather than starting again from zero.
    carried: [Vec<u64>; 6],
    config_hash: u64,
}

/// The counter families, laid out alike in a shard and in `Metrics::carried`.
#[derive(Debug, Clone, Copy)]
enum Family {
    Requests,
    Decisions,
    Latency,
    Errors,
    Duration,
    Own,
}

/// Counters per route for the latency histogram: the buckets, the sum, the count.
const LATENCY_WIDTH: usize = BUCKETS.len() + 2;

/// One worker's counters, aligned so that two workers never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct Shard {
    requests: Box<[AtomicU64]>,
    decisions: Box<[AtomicU64]>,
    /// Per route: the buckets, then the sum in microseconds, then the count.
    latency: Box<[AtomicU64]>,
    errors: Box<[AtomicU64]>,
    /// Per route label (batch and none included), laid out as `latency`.
    duration: Box<[AtomicU64]>,
    /// 5xx answers sluice gave itself, by status.
    own: Box<[AtomicU64]>,
    in_flight: AtomicI64,
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Metrics {
    pub fn new(config: &Config) -> Metrics {
        let workers = config.server.workers;
        let mut routes: Vec<String> = config.routes.iter().map(|r| r.path.clone()).collect();
        let route_upstream = config
            .routes
            .iter()
            .map(|r| config.upstreams[r.upstream].name.clone())
            .collect();
        routes.extend(["batch".to_string(), "none".to_string()]);
        let limits: Vec<(String, String)> = config
            .policies
            .iter()
            .flat_map(|p| {
                let both = p.limiter.limits().len() > 1;
                let names = [
                    p.name.clone(),
                    if both {
                        format!("{}.rate", p.name)
                    } else {
                        p.name.clone()
                    },
                ];
                (0..2).map(move |i| (p.name.clone(), names[i].clone()))
            })
            .collect();
        let limit_kinds = config
            .policies
            .iter()
            .flat_map(|p| (0..2).map(|l| p.limiter.limits().get(l).map(|limit| limit.kind())))
            .collect();
        let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
        // In the order of `Family`.
        let sizes = [
            routes.len() * METHODS.len() * STATUSES,
            limits.len() * DECISIONS.len(),
            config.routes.len() * LATENCY_WIDTH,
            upstreams.len() * ERRORS,
            routes.len() * LATENCY_WIDTH,
            OWN_ERRORS,
        ];
        let shard = || Shard {
            requests: counters(sizes[Family::Requests as usize]),
            decisions: counters(sizes[Family::Decisions as usize]),
            latency: counters(sizes[Family::Latency as usize]),
            errors: counters(sizes[Family::Errors as usize]),
            duration: counters(sizes[Family::Duration as usize]),
            own: counters(sizes[Family::Own as usize]),
            in_flight: AtomicI64::new(0),
        };
        let carried = sizes.map(|n| vec![0; n]);
        let shards = (0..workers.max(1)).map(|_| shard()).collect();
        let config_hash = config.hash;
        Metrics {
            routes,
            route_upstream,
            limits,
            limit_kinds,
            upstreams,
            shards,
            carried,
            config_hash,
        }
    }

    /// The metrics of the generation after `old`: every count `old` holds (its own and those it
    /// carried) carries on under the same labels; labels the new config no longer has end.
    /// Requests `old` answers after this moment are not carried.
    pub fn after(config: &Config, old: &Metrics) -> Metrics {
        let mut new = Metrics::new(config);
        // Each route of `old`, mapped to its index in `new` where it still exists.
        let routes: Vec<Option<usize>> = old
            .routes
            .iter()
            .map(|r| new.routes.iter().position(|n| n == r))
            .collect();
        for (ro, rn) in routes.iter().enumerate() {
            if let Some(rn) = *rn {
                new.carry(old, Family::Requests, METHODS.len() * STATUSES, ro, rn);
                new.carry(old, Family::Duration, LATENCY_WIDTH, ro, rn);
            }
        }
        for (ro, upstream) in old.route_upstream.iter().enumerate() {
            let same = |rn: usize| new.route_upstream.get(rn) == Some(upstream);
            if let Some(rn) = routes[ro].filter(|&rn| same(rn)) {
                new.carry(old, Family::Latency, LATENCY_WIDTH, ro, rn);
            }
        }
        for (lo, labels) in old.limits.iter().enumerate() {
            let Some(ln) = new.limits.iter().position(|n| n == labels) else {
                continue;
            };
            // A one-limit policy has its name twice; its second place counts nothing.
            let ln = if lo % 2 == 1 && new.limits.get(ln + 1) == Some(labels) {
                ln + 1
            } else {
                ln
            };
            if old.limit_kinds[lo] == new.limit_kinds[ln] {
                new.carry(old, Family::Decisions, DECISIONS.len(), lo, ln);
            }
        }
        for (uo, name) in old.upstreams.iter().enumerate() {
            if let Some(un) = new.upstreams.iter().position(|n| n == name) {
                new.carry(old, Family::Errors, ERRORS, uo, un);
            }
        }
        new.carry(old, Family::Own, OWN_ERRORS, 0, 0);
        new
    }

    /// Adds `old`'s counts in its block `from` of `family` (blocks of `width` counters, one
    /// per label value) to this generation's block `to`.
    fn carry(&mut self, old: &Metrics, family: Family, width: usize, from: usize, to: usize) {
        let carried = &mut self.carried[family as usize][to * width..][..width];
        for (i, slot) in carried.iter_mut().enumerate() {
            *slot += old.total(family, from * width + i);
        }
    }

    /// Worker `i`'s shard.
    pub fn shard(&self, i: usize) -> &Shard {
        &self.shards[i % self.shards.len()]
    }

    /// The label index of the batch endpoint, and of requests that matched no route.
    pub fn batch_route(&self) -> usize {
        self.routes.len() - 2
    }

    pub fn no_route(&self) -> usize {
        self.routes.len() - 1
    }

    /// Counter `i` of `family` over the shards, plus what earlier generations counted there.
    fn total(&self, family: Family, i: usize) -> u64 {
        let live: u64 = self
            .shards
            .iter()
            .map(|s| s.family(family)[i].load(Ordering::Relaxed))
            .sum();
        live + self.carried[family as usize][i]
    }
}

impl Shard {
    fn family(&self, family: Family) -> &[AtomicU64] {
        match family {
            Family::Requests => &self.requests,
            Family::Decisions => &self.decisions,
            Family::Latency => &self.latency,
            Family::Errors => &self.errors,
            Family::Duration => &self.duration,
            Family::Own => &self.own,
        }
    }

    pub fn request(&self, route: usize, method: &Method, status: StatusCode) {
        let m = METHODS
            .iter()
            .position(|&m| m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let s = usize::from(status.as_u16()).clamp(100, 599) - 100;
        self.requests[(route * METHODS.len() + m) * STATUSES + s].fetch_add(1, Ordering::Relaxed);
    }

    /// `limit` is the global limit index (policy × 2 + limit within it).
    pub fn decision(&self, limit: usize, decided: Decided) {
        self.decisions[limit * DECISIONS.len() + decided as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_latency(&self, route: usize, took: Duration) {
        observe(
            &self.latency[route * LATENCY_WIDTH..][..LATENCY_WIDTH],
            took,
        );
    }

    /// A request's time from its head to its answer's head, under its route label.
    pub fn duration(&self, route: usize, took: Duration) {
        observe(
            &self.duration[route * LATENCY_WIDTH..][..LATENCY_WIDTH],
            took,
        );
    }

    /// A 5xx answer sluice gave itself (an upstream's own 5xx is not one).
    pub fn own_error(&self, status: StatusCode) {
        let i = usize::from(status.as_u16()).wrapping_sub(500);
        if let Some(n) = self.own.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn upstream_error(&self, upstream: usize, fault: UpstreamFault) {
        self.errors[upstream * ERRORS + fault as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Counts `took` into one histogram's counters: its buckets, the sum in microseconds, the count.
fn observe(histogram: &[AtomicU64], took: Duration) {
    let secs = took.as_secs_f64();
    let bucket = BUCKETS
        .iter()
        .position(|&b| secs <= b)
        .unwrap_or(BUCKETS.len());
    if bucket < BUCKETS.len() {
        histogram[bucket].fetch_add(1, Ordering::Relaxed);
    }
    histogram[BUCKETS.len()].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    histogram[BUCKETS.len() + 1].fetch_add(1, Ordering::Relaxed);
}

/// The counters, with the gauges read from elsewhere at scrape time.
#[derive(Debug)]
pub struct Live {
    pub metrics: Arc<Metrics>,
    pub connections: u64,
    /// `server.max_connections`, the cap `connections` is held under.
    pub max_connections: u64,
    /// Connections asked to close to make room under `max_connections`.
    pub evicted: u64,
    pub tracked_keys: u64,
    /// The limiter's store, and its calls when it is remote.
    pub store: Health,
    /// Reloads that took effect, and reloads refused.
    pub reloads: [u64; 2],
    /// Requests with an `Idempotency-Key`, per outcome (in the order of `Outcome::ALL`).
    pub idempotency: [u64; Outcome::ALL.len()],
    /// Keys (in flight or complete) held in this process's memory.
    pub idempotency_keys: u64,
}

/// The text exposition of everything, for `/metrics`.
pub fn render(live: Live) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(live));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

type Enc<'a> = DescriptorEncoder<'a>;

impl Collector for Live {
    fn encode(&self, mut enc: Enc) -> Result<(), std::fmt::Error> {
        let m = &*self.metrics;
        encode_requests(m, &mut enc)?;
        encode_decisions(m, &mut enc)?;
        encode_latency(m, &mut enc)?;
        encode_errors(m, &mut enc)?;
        encode_duration(m, &mut enc)?;
        encode_own_errors(m, &mut enc)?;
        let in_flight: i64 = m
            .shards
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum();
        gauge(
            &mut enc,
            "sluice_requests_in_flight",
            "Requests being answered now.",
            in_flight,
        )?;
        let open = self.connections as i64;
        gauge(
            &mut enc,
            "sluice_connections_open",
            "Client connections open now.",
            open,
        )?;
        let max = self.max_connections as i64;
        gauge(
            &mut enc,
            "sluice_connections_max",
            "The cap on open client connections (server.max_connections).",
            max,
        )?;
        let help = "Connections closed to make room for new ones over max_connections.";
        enc.encode_descriptor(
            "sluice_connections_evicted",
            help,
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&self.evicted, None)?;
        let keys = self.tracked_keys as i64;
        gauge(
            &mut enc,
            "sluice_limiter_keys",
            "Client keys the limiter holds state for.",
            keys,
        )?;
        encode_store(&self.store, &mut enc)?;
        let help = "Requests with an Idempotency-Key, by outcome.";
        let mut idem = enc.encode_descriptor(
            "sluice_idempotency_requests",
            help,
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in Outcome::ALL.iter().zip(&self.idempotency) {
            idem.encode_family(&[("outcome", outcome.label())])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let keys = self.idempotency_keys as i64;
        let help = "Idempotency keys held in this process's memory.";
        gauge(&mut enc, "sluice_idempotency_keys", help, keys)?;
        let mut reloads = enc.encode_descriptor(
            "sluice_config_reloads",
            "Config reloads by result.",
            None,
            MetricType::Counter,
        )?;
        for (i, result) in ["success", "failure"].iter().enumerate() {
            let n = self.reloads[i];
            reloads
                .encode_family(&[("result", *result)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let hash = format!("{:016x}", m.config_hash);
        let mut info = enc.encode_descriptor(
            "sluice_config",
            "The config in force, by hash.",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[("hash", hash.as_str())])
    }
}

fn gauge(enc: &mut Enc, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn encode_requests(m: &Metrics, enc: &mut Enc) -> Result<(), std::fmt::Error> {
    let help = "Requests answered, by route, method and status.";
    let mut family = enc.encode_descriptor("sluice_requests", help, None, MetricType::Counter)?;
    for (r, route) in m.routes.iter().enumerate() {
        for (k, method) in METHODS.iter().enumerate() {
            for s in 0..STATUSES {
                let i = (r * METHODS.len() + k) * STATUSES + s;
                let n = m.total(Family::Requests, i);
                if n > 0 {
                    let status = (s + 100).to_string();
                    let labels = [
                        ("route", route.as_str()),
                        ("method", method),
                        ("status", status.as_str()),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
    }
    Ok(())
}

fn encode_decisions(m: &Metrics, enc: &mut Enc) -> Result<(), std::fmt::Error> {
    let help = "Limiter decisions, by policy, limit and decision.";
    let mut family =
        enc.encode_descriptor("sluice_limiter_decisions", help, None, MetricType::Counter)?;
    for (l, (policy, limit)) in m.limits.iter().enumerate() {
        for (d, decision) in DECISIONS.iter().enumerate() {
            let n = m.total(Family::Decisions, l * DECISIONS.len() + d);
            if n > 0 {
                let labels = [
                    ("policy", policy.as_str()),
                    ("limit", limit.as_str()),
                    ("decision", decision),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
    }
    Ok(())
}

fn encode_latency(m: &Metrics, enc: &mut Enc) -> Result<(), std::fmt::Error> {
    let help = "Time from sending a request upstream to its response head.";
    let unit = prometheus_client::registry::Unit::Seconds;
    let mut family = enc.encode_descriptor(
        "sluice_upstream_latency",
        help,
        Some(&unit),
        MetricType::Histogram,
    )?;
    for (r, upstream) in m.route_upstream.iter().enumerate() {
        let labels = [
            ("route", m.routes[r].as_str()),
            ("upstream", upstream.as_str()),
        ];
        encode_histogram(m, Family::Latency, r, &labels, &mut family)?;
    }
    Ok(())
}

fn encode_duration(m: &Metrics, enc: &mut Enc) -> Result<(), std::fmt::Error> {
    let help = "Time from a request's head to its answer's head, as sluice saw it.";
    let unit = prometheus_client::registry::Unit::Seconds;
    let mut family = enc.encode_descriptor(
        "sluice_request_duration",
        help,
        Some(&unit),
        MetricType::Histogram,
    )?;
    for (r, route) in m.routes.iter().enumerate() {
        encode_histogram(
            m,
            Family::Duration,
            r,
            &[("route", route.as_str())],
            &mut family,
        )?;
    }
    Ok(())
}

/// Block `r` of the histogram `family`, under `labels`, unless it counted nothing.
fn encode_histogram(
    m: &Metrics,
    family: Family,
    r: usize,
    labels: &[(&str, &str)],
    enc: &mut MetricEncoder,
) -> Result<(), std::fmt::Error> {
    let at = |i: usize| m.total(family, r * LATENCY_WIDTH + i);
    let count = at(BUCKETS.len() + 1);
    if count == 0 {
        return Ok(());
    }
    let sum = at(BUCKETS.len()) as f64 / 1e6;
    // Per-bucket counts: the encoder makes them cumulative.
    let mut buckets: Vec<(f64, u64)> = BUCKETS
        .iter()
        .enumerate()
        .map(|(b, &le)| (le, at(b)))
        .collect();
    let finite: u64 = buckets.iter().map(|(_, n)| n).sum();
    // A bucket and the count are separate counters: a read between the two increments of
    // one request (by a scrape, or by a reload's carry) can see the bucket but not the count.
    let count = count.max(finite);
    buckets.push((f64::INFINITY, count - finite));
    enc.encode_family(&labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

fn encode_own_errors(m: &Metrics, enc: &mut Enc) -> Result<(), std::fmt::Error> {
    let help = "5xx answers sluice gave itself (not an upstream's), by status.";
    let mut family = enc.encode_descriptor("sluice_own_errors", help, None, MetricType::Counter)?;
    for i in 0..OWN_ERRORS {
        let n = m.total(Family::Own, i);
        if n > 0 {
            let status = (i + 500).to_string();
            family
                .encode_family(&[("status", status.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    Ok(())
}

fn encode_errors(m: &Metrics, enc: &mut Enc) -> Result<(), std::fmt::Error> {
    let help = "Upstream failures, by upstream and kind.";
    let mut family =
        enc.encode_descriptor("sluice_upstream_errors", help, None, MetricType::Counter)?;
    for (u, upstream) in m.upstreams.iter().enumerate() {
        for fault in UpstreamFault::ALL {
            let n = m.total(Family::Errors, u * ERRORS + fault as usize);
            if n > 0 {
                let labels = [("upstream", upstream.as_str()), ("kind", fault.label())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
    }
    Ok(())
}

/// The limiter's store: up or not, and (for Redis) its calls, their latency and fallbacks.
fn encode_store(h: &Health, enc: &mut Enc) -> Result<(), std::fmt::Error> {
    let mut up = enc.encode_descriptor(
        "sluice_store_up",
        "1 while the limiter's store answers (always, in memory).",
        None,
        MetricType::Gauge,
    )?;
    up.encode_family(&[("kind", h.kind)])?
        .encode_gauge(&i64::from(h.up))?;
    let help = "Calls to the shared limiter store, by result.";
    let mut calls = enc.encode_descriptor("sluice_store_calls", help, None, MetricType::Counter)?;
    for (i, result) in ["ok", "error", "timeout"].iter().enumerate() {
        calls
            .encode_family(&[("result", *result)])?
            .encode_counter::<NoLabelSet, _, u64>(&h.calls[i], None)?;
    }
    let unit = prometheus_client::registry::Unit::Seconds;
    let help = "Time a call to the shared limiter store took.";
    let mut latency = enc.encode_descriptor(
        "sluice_store_call_duration",
        help,
        Some(&unit),
        MetricType::Histogram,
    )?;
    let mut buckets: Vec<(f64, u64)> = CALL_BUCKETS.iter().copied().zip(h.latency).collect();
    let count: u64 = h.calls.iter().sum();
    let finite: u64 = buckets.iter().map(|(_, n)| n).sum();
    buckets.push((f64::INFINITY, count.saturating_sub(finite)));
    let sum = h.latency[CALL_BUCKETS.len()] as f64 / 1e6;
    latency.encode_histogram::<NoLabelSet>(sum, count.max(finite), &buckets, None)?;
    let help = "Times the shared limiter store became unreachable (each episode once).";
    enc.encode_descriptor("sluice_store_fallbacks", help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&h.fallbacks, None)?;
    let help = "Checks decided by store.on_error while the shared store was unreachable.";
    enc.encode_descriptor(
        "sluice_store_fallback_checks",
        help,
        None,
        MetricType::Counter,
    )?
    .encode_counter::<NoLabelSet, _, u64>(&h.fallback_checks, None)?;
    let help = "Checks answered on this replica without a call: a held refusal or a leased token.";
    let mut local = enc.encode_descriptor(
        "sluice_store_local_answers",
        help,
        None,
        MetricType::Counter,
    )?;
    for (i, answer) in ["refusal", "lease"].iter().enumerate() {
        local
            .encode_family(&[("answer", *answer)])?
            .encode_counter::<NoLabelSet, _, u64>(&h.local[i], None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(routes: &str, window: &str) -> Config {
        let text = format!(
            "[upstreams.api]\ntargets = [\"http://127.0.0.1:1\"]\n\
             [policies.p]\nrate = \"1/s\"\nburst = 5\n{window}\n{routes}"
        );
        Config::parse(&text, &Overrides::default()).unwrap()
    }

    fn rendered(m: Metrics) -> String {
        render(Live {
            metrics: Arc::new(m),
            connections: 0,
            max_connections: 1,
            evicted: 0,
            tracked_keys: 0,
            store: Health::default(),
            reloads: [0, 0],
            idempotency: [0; Outcome::ALL.len()],
            idempotency_keys: 0,
        })
    }

    #[test]
    fn a_limits_counts_are_not_carried_to_another_algorithm_under_its_label() {
        // A rate-only policy counts under limit="p"; with a window added, "p" is the window.
        let rate_only = config("[[routes]]\npath = \"/a\"\npolicy = \"p\"\n", "");
        let p = rate_only
            .policies
            .iter()
            .position(|p| p.name == "p")
            .unwrap();
        let old = Metrics::new(&rate_only);
        old.shard(0).decision(p * 2, Decided::Refused);
        let both = config(
            "[[routes]]\npath = \"/a\"\npolicy = \"p\"\n",
            "window = \"60s\"\nwindow_requests = 100",
        );
        let text = rendered(Metrics::after(&both, &old));
        assert!(!text.contains(r#"policy="p""#), "{text}");
        // Unchanged, the same policy carries its counts.
        let again = Metrics::after(&rate_only, &old);
        let refused =
            r#"sluice_limiter_decisions_total{policy="p",limit="p",decision="refused"} 1"#;
        assert!(rendered(again).contains(refused));
    }

    #[test]
    fn a_latency_read_between_a_bucket_and_the_count_is_still_a_histogram() {
        let cfg = config("[[routes]]\npath = \"/a\"\n", "");
        let m = Metrics::new(&cfg);
        m.shard(0).upstream_latency(0, Duration::from_micros(300));
        // A second request's bucket counted, its count not yet.
        m.shard(0).latency[0].fetch_add(1, Ordering::Relaxed);
        let carried = Metrics::after(&cfg, &m);
        for text in [rendered(m), rendered(carried)] {
            let count = r#"sluice_upstream_latency_seconds_count{route="/a",upstream="api"} 2"#;
            assert!(text.contains(count), "{text}");
        }
    }

    #[test]
    fn own_errors_and_durations_are_counted_and_carried() {
        let cfg = config("[[routes]]\npath = \"/a\"\n", "");
        let m = Metrics::new(&cfg);
        m.shard(0).own_error(StatusCode::BAD_GATEWAY);
        m.shard(0).own_error(StatusCode::OK);
        m.shard(0).duration(0, Duration::from_millis(3));
        m.shard(0)
            .duration(m.batch_route(), Duration::from_secs(100));
        let text = rendered(Metrics::after(&cfg, &m));
        assert!(
            text.contains("sluice_own_errors_total{status=\"502\"} 1"),
            "{text}"
        );
        assert!(!text.contains("status=\"200\""), "{text}");
        let bucket = r#"sluice_request_duration_seconds_bucket{le="0.005",route="/a"} 1"#;
        assert!(text.contains(bucket), "{text}");
        let inf = r#"sluice_request_duration_seconds_bucket{le="+Inf",route="batch"} 1"#;
        assert!(text.contains(inf), "{text}");
        assert!(text.contains("sluice_connections_max 1"), "{text}");
    }

    #[test]
    fn a_reload_carries_counts_under_the_labels_that_remain() {
        let routes = "[[routes]]\npath = \"/a\"\npolicy = \"p\"\n[[routes]]\npath = \"/b\"\n";
        let before = config(routes, "");
        let old = Metrics::new(&before);
        let (a, b) = (0, 1);
        old.shard(0).request(a, &Method::GET, StatusCode::OK);
        old.shard(1).request(a, &Method::GET, StatusCode::OK);
        old.shard(0).request(b, &Method::GET, StatusCode::OK);
        let p = before.policies.iter().position(|p| p.name == "p").unwrap();
        old.shard(0).decision(p * 2, Decided::Allowed);
        // /b goes.
        let new = Metrics::after(
            &config("[[routes]]\npath = \"/a\"\npolicy = \"p\"\n", ""),
            &old,
        );
        new.shard(0).request(0, &Method::GET, StatusCode::OK);
        let text = rendered(new);
        let a_ok = r#"sluice_requests_total{route="/a",method="GET",status="200"} 3"#;
        assert!(text.contains(a_ok), "{text}");
        assert!(!text.contains(r#"route="/b""#), "{text}");
        let allowed =
            r#"sluice_limiter_decisions_total{policy="p",limit="p",decision="allowed"} 1"#;
        assert!(text.contains(allowed), "{text}");
    }
}
