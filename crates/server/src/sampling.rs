//! Which traces are exported: a ratio of them, as every SSP samples, and — whatever the
//! ratio — every trace with an error and every decision slower than its budget, the two
//! an operator opens a trace for.
//!
//! The head decision is OpenTelemetry's, read from the standard variables:
//! `OTEL_TRACES_SAMPLER` (default `parentbased_traceidratio`) and
//! `OTEL_TRACES_SAMPLER_ARG` (default `0.01`: at 10,000 decisions a second, 100 traces a
//! second per service). A span the head decision does not sample is still recorded
//! ([`KeepUnsampled`] turns its drop into record-only) and held by [`TailKeep`] until the
//! process's root span of its trace ends: if any of them has an error status, or a span
//! carrying `cascade.budget_ms` ran longer than that, the whole local part of the trace
//! is exported, its root marked `cascade.trace.kept = "error"` or `"over_budget"` (so a
//! backend can tell ratio-sampled traces, which stand for 1/ratio decisions each, from
//! kept ones); otherwise it is dropped. Each service decides for its own part: a
//! failing network call is kept in network-caller and, through its client span, in
//! bid-intake.
//!
//! `CASCADE_TRACES_KEEP=none` turns the keeping off (then unsampled spans are not even
//! recorded); `always_off` keeps nothing. What the keeping costs — every span recorded,
//! exported or not — is measured by `cargo bench -p cascade-server --bench sampling`
//! (BENCHMARKS.md). Bounds: at most [`MAX_PENDING_TRACES`] traces and
//! [`MAX_SPANS_PER_TRACE`] spans each are held per shard; a span past them, or one
//! ending after its root (a task the decision spawned), is dropped; both are counted
//! (`cascade_trace_spans_dropped_total`), as are the traces kept
//! (`cascade_traces_kept_total{reason}`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    SamplingDecision, SamplingResult, SpanContext, SpanKind, Status, TraceId,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, ShouldSample, Span, SpanData, SpanProcessor, TracerProviderBuilder,
};
use parking_lot::Mutex;

/// Traces held at once per shard, waiting for their root span.
pub const MAX_PENDING_TRACES: usize = 1_024;
/// Spans held per trace.
pub const MAX_SPANS_PER_TRACE: usize = 256;
/// A trace whose root has not ended after this long is given up (its root ended first,
/// or never will in this process).
const PENDING_FOR_AT_MOST: Duration = Duration::from_secs(10);
const SHARDS: usize = 16;
/// The attribute a span carries to say how long it was allowed to take.
pub const BUDGET_ATTRIBUTE: &str = "cascade.budget_ms";
const KEPT_ATTRIBUTE: &str = "cascade.trace.kept";
const DEFAULT_RATIO: f64 = 0.01;

/// The sampling policy the environment asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub head: HeadSampler,
    /// Keep unsampled traces with an error or over their budget.
    pub keep_errors_and_slow: bool,
}

/// The head decision, as `OTEL_TRACES_SAMPLER[_ARG]` name it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeadSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// Why the sampling variables cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error(
        "OTEL_TRACES_SAMPLER={0:?} is not a sampler: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )]
    UnknownSampler(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?} is not a ratio between 0 and 1")]
    BadRatio(String),
    #[error("CASCADE_TRACES_KEEP={0:?} is not errors_and_slow or none")]
    UnknownKeep(String),
}

impl Policy {
    /// Reads the policy through `read` (the environment, or a test's map).
    pub fn from_env(read: impl Fn(&str) -> Option<String>) -> Result<Policy, PolicyError> {
        let value = |name| read(name).filter(|v: &String| !v.trim().is_empty());
        let ratio = || match value("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(DEFAULT_RATIO),
            Some(arg) => match arg.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => Err(PolicyError::BadRatio(arg)),
            },
        };
        let sampler = value("OTEL_TRACES_SAMPLER");
        let head = match sampler.as_deref().map(str::trim) {
            None | Some("parentbased_traceidratio") => HeadSampler::ParentBasedRatio(ratio()?),
            Some("traceidratio") => HeadSampler::Ratio(ratio()?),
            Some("always_on") => HeadSampler::AlwaysOn,
            Some("always_off") => HeadSampler::AlwaysOff,
            Some("parentbased_always_on") => HeadSampler::ParentBasedAlwaysOn,
            Some("parentbased_always_off") => HeadSampler::ParentBasedAlwaysOff,
            Some(_) => return Err(PolicyError::UnknownSampler(sampler.unwrap_or_default())),
        };
        let keep = match value("CASCADE_TRACES_KEEP").as_deref().map(str::trim) {
            None | Some("errors_and_slow") => true,
            Some("none") => false,
            Some(other) => return Err(PolicyError::UnknownKeep(other.to_string())),
        };
        let keeps_nothing = matches!(
            head,
            HeadSampler::AlwaysOff | HeadSampler::ParentBasedAlwaysOff
        );
        Ok(Policy {
            head,
            keep_errors_and_slow: keep && !keeps_nothing,
        })
    }

    /// `builder` sampling as the policy says, its spans going through `batch`.
    pub fn apply(
        &self,
        builder: TracerProviderBuilder,
        batch: BatchSpanProcessor,
    ) -> TracerProviderBuilder {
        match self.keep_errors_and_slow {
            true => builder
                .with_sampler(KeepUnsampled(self.sampler()))
                .with_span_processor(TailKeep::new(batch)),
            false => builder
                .with_sampler(self.sampler())
                .with_span_processor(batch),
        }
    }

    /// The SDK sampler making the head decision.
    pub fn sampler(&self) -> Sampler {
        match self.head {
            HeadSampler::AlwaysOn => Sampler::AlwaysOn,
            HeadSampler::AlwaysOff => Sampler::AlwaysOff,
            HeadSampler::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
            HeadSampler::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            HeadSampler::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            HeadSampler::ParentBasedRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// The head sampler, with what it drops recorded instead, for [`TailKeep`] to judge.
#[derive(Clone, Debug)]
pub struct KeepUnsampled(pub Sampler);

impl ShouldSample for KeepUnsampled {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let mut result =
            self.0
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if result.decision == SamplingDecision::Drop {
            result.decision = SamplingDecision::RecordOnly;
        }
        result
    }
}

/// Why a trace the head decision did not sample is exported after all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    Error,
    OverBudget,
}

impl Kept {
    fn name(self) -> &'static str {
        match self {
            Kept::Error => "error",
            Kept::OverBudget => "over_budget",
        }
    }
}

/// Why `span` alone would keep its trace.
pub fn worth_keeping(span: &SpanData) -> Option<Kept> {
    if matches!(span.status, Status::Error { .. }) {
        return Some(Kept::Error);
    }
    let budget = span.attributes.iter().find_map(|kv| {
        (kv.key.as_str() == BUDGET_ATTRIBUTE).then_some(match kv.value {
            Value::I64(ms) => u64::try_from(ms).ok(),
            _ => None,
        })?
    })?;
    let took = span.end_time.duration_since(span.start_time).ok()?;
    (took > Duration::from_millis(budget)).then_some(Kept::OverBudget)
}

/// Passes sampled spans on to `inner`; holds the others of a trace until its local root
/// ends, then passes them all on if one of them is [`worth_keeping`], else drops them.
#[derive(Debug)]
pub struct TailKeep<P> {
    inner: P,
    shards: Box<[Mutex<HashMap<TraceId, Pending>>]>,
}

/// A trace's spans held, since when the first arrived, and whether one keeps them.
#[derive(Debug)]
struct Pending {
    since: Instant,
    spans: Vec<SpanData>,
    kept: Option<Kept>,
}

impl<P: SpanProcessor> TailKeep<P> {
    pub fn new(inner: P) -> Self {
        for kept in [Kept::Error, Kept::OverBudget] {
            metrics::counter!("cascade_traces_kept_total", "reason" => kept.name()).absolute(0);
        }
        metrics::counter!("cascade_trace_spans_dropped_total").absolute(0);
        TailKeep {
            inner,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, trace_id: TraceId) -> &Mutex<HashMap<TraceId, Pending>> {
        let index = u128::from_be_bytes(trace_id.to_bytes()) as usize % SHARDS;
        &self.shards[index]
    }

    fn export(&self, mut spans: Vec<SpanData>, kept: Kept) {
        metrics::counter!("cascade_traces_kept_total", "reason" => kept.name()).increment(1);
        for span in &mut spans {
            let context = &span.span_context;
            span.span_context = SpanContext::new(
                context.trace_id(),
                context.span_id(),
                context.trace_flags().with_sampled(true),
                context.is_remote(),
                context.trace_state().clone(),
            );
        }
        if let Some(root) = spans.last_mut() {
            root.attributes
                .push(KeyValue::new(KEPT_ATTRIBUTE, kept.name()));
        }
        for span in spans {
            self.inner.on_end(span);
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for TailKeep<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            return self.inner.on_end(span);
        }
        let trace_id = span.span_context.trace_id();
        let local_root = span.parent_span_id == opentelemetry::trace::SpanId::INVALID
            || span.parent_span_is_remote;
        let kept = worth_keeping(&span);
        let mut shard = self.shard(trace_id).lock();
        if local_root {
            let held = shard.remove(&trace_id);
            drop(shard);
            let (mut spans, held_kept) = match held {
                Some(held) => (held.spans, held.kept),
                None => (Vec::new(), None),
            };
            if let Some(kept) = kept.or(held_kept) {
                spans.push(span);
                self.export(spans, kept);
            }
            return;
        }
        if !shard.contains_key(&trace_id) && shard.len() >= MAX_PENDING_TRACES {
            let now = Instant::now();
            let mut given_up = 0;
            shard.retain(|_, held| {
                let keep = now.duration_since(held.since) < PENDING_FOR_AT_MOST;
                if !keep {
                    given_up += held.spans.len() as u64;
                }
                keep
            });
            if shard.len() >= MAX_PENDING_TRACES {
                given_up += 1;
            }
            if given_up > 0 {
                metrics::counter!("cascade_trace_spans_dropped_total").increment(given_up);
            }
            if shard.len() >= MAX_PENDING_TRACES {
                return;
            }
        }
        let held = shard.entry(trace_id).or_insert_with(|| Pending {
            since: Instant::now(),
            spans: Vec::new(),
            kept: None,
        });
        held.kept = held.kept.or(kept);
        match held.spans.len() < MAX_SPANS_PER_TRACE {
            true => held.spans.push(span),
            false => metrics::counter!("cascade_trace_spans_dropped_total").increment(1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;
    use std::time::SystemTime;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    #[derive(Debug, Default, Clone)]
    struct Passed(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Passed {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn span(trace: u128, id: u64, parent: u64, sampled: bool, took: Duration) -> SpanData {
        let flags = match sampled {
            true => TraceFlags::SAMPLED,
            false => TraceFlags::default(),
        };
        let start_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
                SpanId::from(id),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed("span"),
            start_time,
            end_time: start_time + took,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    const FAST: Duration = Duration::from_millis(5);

    #[test]
    fn an_unsampled_trace_without_trouble_is_dropped_whole() {
        let passed = Passed::default();
        let keep = TailKeep::new(passed.clone());
        keep.on_end(span(1, 2, 1, false, FAST));
        keep.on_end(span(1, 1, 0, false, FAST));
        assert!(passed.0.lock().is_empty());
        assert!(keep.shards.iter().all(|shard| shard.lock().is_empty()));
    }

    #[test]
    fn an_error_anywhere_keeps_the_whole_local_trace_marked_as_kept() {
        let passed = Passed::default();
        let keep = TailKeep::new(passed.clone());
        let mut failed = span(7, 3, 2, false, FAST);
        failed.status = Status::error("timeout");
        keep.on_end(failed);
        keep.on_end(span(7, 2, 1, false, FAST));
        // Another trace, unsampled and fine, in between: not kept.
        keep.on_end(span(8, 2, 1, false, FAST));
        keep.on_end(span(8, 1, 0, false, FAST));
        keep.on_end(span(7, 1, 0, false, FAST));
        let passed = passed.0.lock();
        let ids: Vec<u64> = passed
            .iter()
            .map(|s| u64::from_be_bytes(s.span_context.span_id().to_bytes()))
            .collect();
        assert_eq!(ids, [3, 2, 1]);
        assert!(passed.iter().all(|s| s.span_context.is_sampled()));
        assert!(
            passed
                .iter()
                .all(|s| s.span_context.trace_id() == TraceId::from(7))
        );
        let root = &passed[2];
        assert!(
            root.attributes
                .contains(&KeyValue::new(KEPT_ATTRIBUTE, "error")),
            "{root:?}"
        );
        assert!(
            !passed[0]
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == KEPT_ATTRIBUTE)
        );
    }

    #[test]
    fn a_span_over_its_budget_keeps_its_trace_and_one_within_does_not() {
        let passed = Passed::default();
        let keep = TailKeep::new(passed.clone());
        let mut within = span(1, 1, 0, false, Duration::from_millis(90));
        within
            .attributes
            .push(KeyValue::new(BUDGET_ATTRIBUTE, 100_i64));
        keep.on_end(within);
        assert!(passed.0.lock().is_empty());
        let mut over = span(2, 1, 0, false, Duration::from_millis(130));
        over.attributes
            .push(KeyValue::new(BUDGET_ATTRIBUTE, 100_i64));
        keep.on_end(over);
        let passed = passed.0.lock();
        assert_eq!(passed.len(), 1);
        assert!(
            passed[0]
                .attributes
                .contains(&KeyValue::new(KEPT_ATTRIBUTE, "over_budget"))
        );
    }

    #[test]
    fn sampled_spans_pass_at_once_and_a_remote_parent_makes_a_local_root() {
        let passed = Passed::default();
        let keep = TailKeep::new(passed.clone());
        keep.on_end(span(1, 2, 1, true, FAST));
        assert_eq!(passed.0.lock().len(), 1);
        let mut served = span(3, 5, 4, false, FAST);
        served.parent_span_is_remote = true;
        served.status = Status::error("INTERNAL");
        keep.on_end(served);
        assert_eq!(passed.0.lock().len(), 2);
    }

    #[test]
    fn what_is_held_is_bounded() {
        let passed = Passed::default();
        let keep = TailKeep::new(passed.clone());
        // Children whose roots never end here, in more traces than a shard holds.
        for trace in 0..(SHARDS * MAX_PENDING_TRACES * 2) as u128 {
            keep.on_end(span(trace + 1, 2, 1, false, FAST));
        }
        for _ in 0..MAX_SPANS_PER_TRACE * 2 {
            keep.on_end(span(u128::MAX, 2, 1, false, FAST));
        }
        for shard in keep.shards.iter() {
            let shard = shard.lock();
            assert!(shard.len() <= MAX_PENDING_TRACES);
            assert!(
                shard
                    .values()
                    .all(|held| held.spans.len() <= MAX_SPANS_PER_TRACE)
            );
        }
    }

    fn policy(vars: &[(&str, &str)]) -> Result<Policy, PolicyError> {
        Policy::from_env(crate::env_of(vars))
    }

    #[test]
    fn the_policy_defaults_to_one_percent_parent_based_keeping_errors_and_slow() {
        assert_eq!(
            policy(&[]),
            Ok(Policy {
                head: HeadSampler::ParentBasedRatio(0.01),
                keep_errors_and_slow: true
            })
        );
        assert_eq!(
            policy(&[("OTEL_TRACES_SAMPLER_ARG", "0.25")]).unwrap().head,
            HeadSampler::ParentBasedRatio(0.25)
        );
        assert_eq!(
            policy(&[("OTEL_TRACES_SAMPLER", "always_on")])
                .unwrap()
                .head,
            HeadSampler::AlwaysOn
        );
        assert!(
            !policy(&[("CASCADE_TRACES_KEEP", "none")])
                .unwrap()
                .keep_errors_and_slow
        );
        // Off means off: nothing is kept either.
        assert!(
            !policy(&[("OTEL_TRACES_SAMPLER", "always_off")])
                .unwrap()
                .keep_errors_and_slow
        );
        assert_eq!(
            policy(&[("OTEL_TRACES_SAMPLER", "sometimes")]),
            Err(PolicyError::UnknownSampler("sometimes".into()))
        );
        for bad in ["1.5", "-0.1", "half"] {
            assert_eq!(
                policy(&[("OTEL_TRACES_SAMPLER_ARG", bad)]),
                Err(PolicyError::BadRatio(bad.into()))
            );
        }
        assert_eq!(
            policy(&[("CASCADE_TRACES_KEEP", "all")]),
            Err(PolicyError::UnknownKeep("all".into()))
        );
    }
}
