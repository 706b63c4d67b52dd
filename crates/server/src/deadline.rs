//! Deadlines are propagated, never invented per hop: a server reads the caller's
//! `grpc-timeout`, and a client sends what is left of it.

use std::time::Duration;

use tokio::time::Instant;

/// The time a call has to be answered in, read from its `grpc-timeout`: the caller's
/// timeout less the margin by which [`EnforceDeadlineLayer`] answers ahead of it. A
/// service that plans its work within this finishes before the layer cuts it off, and so
/// answers what it decided rather than `DEADLINE_EXCEEDED`.
fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value).map(ahead)
}

/// When a call arrived and, when its caller set a `grpc-timeout`, the deadline it must be
/// answered by (see [`caller_timeout`]). [`EnforceDeadlineLayer`] records it in the
/// request's extensions as the call arrives, before its body is read, so that every
/// service plans with the same deadline the layer enforces, from the same instant,
/// instead of parsing the header again once the request is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallTiming {
    pub arrived: Instant,
    pub deadline: Option<Deadline>,
}

impl CallTiming {
    fn read(headers: &http::HeaderMap) -> Self {
        let arrived = Instant::now();
        CallTiming {
            arrived,
            deadline: caller_timeout(headers).map(|timeout| Deadline::after_from(arrived, timeout)),
        }
    }

    /// The timing the layer recorded for `request`; for a call that did not pass through
    /// the layer (a service called in process), read now from its metadata.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        match request.extensions().get::<CallTiming>() {
            Some(timing) => *timing,
            None => Self::read(&request.metadata().clone().into_headers()),
        }
    }

    /// The caller's deadline, or `fallback` from arrival when the caller set none.
    pub fn deadline_or(&self, fallback: Duration) -> Deadline {
        self.deadline
            .unwrap_or_else(|| Deadline::after_from(self.arrived, fallback))
    }

    /// How long the caller gave the call, counted from its arrival.
    pub fn caller_budget(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.instant().saturating_duration_since(self.arrived))
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// An absolute point in time by which a call must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self::after_from(Instant::now(), budget)
    }

    /// `budget` from `start` (when the call arrived, so that the time spent reading it
    /// counts against it, as it does for the caller).
    pub fn after_from(start: Instant, budget: Duration) -> Self {
        Deadline(start + budget)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn instant(&self) -> Instant {
        self.0
    }

    /// This deadline less `reserve`: what a downstream call may take so that the
    /// caller still has `reserve` to answer after it.
    pub fn less(&self, reserve: std::time::Duration) -> Self {
        Deadline(self.0.checked_sub(reserve).unwrap_or_else(Instant::now))
    }

    /// A request whose `grpc-timeout` is what is left of this deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.remaining());
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999u"),
            Some(Duration::from_micros(99_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn rejects_malformed_values() {
        for value in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(value), None, "{value}");
        }
    }
}

/// Answers `DEADLINE_EXCEEDED` when a call outlives its caller's `grpc-timeout`.
///
/// tonic enforces the header itself, but answers `CANCELLED` ("Timeout expired"), which
/// tells a gateway the caller gave up rather than that we ran out of time. This layer,
/// inside tonic's, fires a moment earlier (a twentieth of the timeout, between 1 and
/// 5 ms), so the caller hears the code gRPC specifies. The services answer in time on
/// their own (each keeps a reserve); this is the floor under any call that still does
/// not.
#[derive(Clone, Copy, Debug, Default)]
pub struct EnforceDeadlineLayer;

impl<S> tower::Layer<S> for EnforceDeadlineLayer {
    type Service = EnforceDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnforceDeadline { inner }
    }
}

#[derive(Clone, Debug)]
pub struct EnforceDeadline<S> {
    inner: S,
}

/// How long before the caller's deadline the layer answers.
fn ahead(timeout: Duration) -> Duration {
    let margin = (timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(5));
    timeout.saturating_sub(margin)
}

impl<S, B, RB> tower::Service<http::Request<B>> for EnforceDeadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let timing = CallTiming::read(request.headers());
        request.extensions_mut().insert(timing);
        let call = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = timing.deadline else {
                return call.await;
            };
            match tokio::time::timeout_at(deadline.instant(), call).await {
                Ok(answer) => answer,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "no answer within the caller's deadline of {:?}",
                    deadline.instant() - timing.arrived
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod enforce_tests {
    use super::*;
    use tower::{Layer as _, ServiceExt as _};

    fn slow(
        delay: Duration,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok(http::Response::new("answered".to_string()))
        })
    }

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder();
        if let Some(timeout) = timeout {
            builder = builder.header("grpc-timeout", timeout);
        }
        builder.body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_answers_deadline_exceeded_before_it() {
        let service = EnforceDeadlineLayer.layer(slow(Duration::from_millis(100)));
        let started = Instant::now();
        let response = service.oneshot(request(Some("40m"))).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_time_or_without_a_deadline_are_untouched() {
        let in_time = EnforceDeadlineLayer.layer(slow(Duration::from_millis(10)));
        let response = in_time.oneshot(request(Some("40m"))).await.unwrap();
        assert_eq!(response.body(), "answered");
        let unbounded = EnforceDeadlineLayer.layer(slow(Duration::from_secs(60)));
        let response = unbounded.oneshot(request(None)).await.unwrap();
        assert_eq!(response.body(), "answered");
    }

    #[test]
    fn the_margin_is_a_twentieth_between_one_and_five_milliseconds() {
        let ms = Duration::from_millis;
        assert_eq!(ahead(ms(10)), ms(9));
        assert_eq!(ahead(ms(40)), ms(38));
        assert_eq!(ahead(ms(1_000)), ms(995));
        assert_eq!(ahead(Duration::ZERO), Duration::ZERO);
    }

    /// A service that works to the deadline the layer hands it (less a millisecond, the
    /// timer's grain) is answered, not cut off by the layer.
    #[tokio::test(start_paused = true)]
    async fn a_service_working_to_its_recorded_deadline_answers_before_the_layer_fires() {
        for header in ["10m", "40m", "250m", "2S"] {
            let service = EnforceDeadlineLayer.layer(tower::service_fn(
                |request: http::Request<()>| async move {
                    let timing = *request.extensions().get::<CallTiming>().unwrap();
                    let deadline = timing.deadline.unwrap();
                    tokio::time::sleep_until(deadline.instant() - Duration::from_millis(1)).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new("answered".to_string()))
                },
            ));
            let response = service.oneshot(request(Some(header))).await.unwrap();
            assert_eq!(response.body(), "answered", "{header}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_arrival() {
        let call = |header: Option<&str>| {
            let mut request = tonic::Request::new(());
            if let Some(header) = header {
                request
                    .metadata_mut()
                    .insert("grpc-timeout", header.parse().unwrap());
            }
            request
        };
        let timing = CallTiming::of(&call(Some("200m")));
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(timing.caller_budget(), Some(Duration::from_millis(195)));
        assert_eq!(
            timing.deadline_or(Duration::from_secs(9)).remaining(),
            Duration::from_millis(165)
        );
        let unbounded = CallTiming::of(&call(None));
        assert_eq!(unbounded.caller_budget(), None);
        assert_eq!(
            unbounded.deadline_or(Duration::from_millis(100)).instant(),
            unbounded.arrived + Duration::from_millis(100)
        );
    }
}
