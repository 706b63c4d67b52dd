//! Firing win, loss and billing notices at the URLs bids gave. Win and loss notices are
//! best effort: fired off the hot path, a bounded number at once (beyond it a notice is
//! dropped and counted), each with a short timeout. Billing notices are delivered by
//! [`Notifier::deliver`], whose caller keeps them durably until a 2xx answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::OpenRtbHttpAdapter;
use crate::guard::OutboundGuard;

/// What a notice says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    Win,
    Loss,
    Billing,
}

impl NoticeKind {
    pub fn name(self) -> &'static str {
        match self {
            NoticeKind::Win => "win",
            NoticeKind::Loss => "loss",
            NoticeKind::Billing => "billing",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Notifier {
    client: reqwest::Client,
    guard: OutboundGuard,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
}

impl Notifier {
    /// Notices go out through `adapter`'s client (the networks' own, with their TLS
    /// roots and its outbound guard), at most `max_in_flight` at once, each given
    /// `timeout`.
    pub fn new(adapter: &OpenRtbHttpAdapter, max_in_flight: usize, timeout: Duration) -> Self {
        for kind in [NoticeKind::Win, NoticeKind::Loss, NoticeKind::Billing] {
            for outcome in ["fired", "failed", "dropped"] {
                metrics::counter!("cascade_notices_total", "kind" => kind.name(), "outcome" => outcome)
                    .absolute(0);
            }
        }
        Self {
            client: adapter.client().clone(),
            guard: adapter.guard().clone(),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            timeout,
        }
    }

    /// Fires a win or loss notice in the background; counted as fired, failed or
    /// dropped (too many in flight) in `cascade_notices_total`.
    pub fn fire(&self, kind: NoticeKind, url: String) {
        self.fire_then(kind, url, |_| {});
    }

    /// [`Notifier::fire`], then `done` with how it went: `fired`, `failed` or `dropped`.
    pub fn fire_then(
        &self,
        kind: NoticeKind,
        url: String,
        done: impl FnOnce(&'static str) + Send + 'static,
    ) {
        if url.is_empty() {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            count(kind, "dropped");
            tracing::debug!(kind = kind.name(), "notice dropped: too many in flight");
            done("dropped");
            return;
        };
        let notifier = self.clone();
        tokio::spawn(async move {
            let outcome = match notifier.deliver(&url).await {
                Ok(()) => "fired",
                Err(error) => {
                    tracing::debug!(kind = kind.name(), %error, "notice failed");
                    "failed"
                }
            };
            count(kind, outcome);
            drop(permit);
            done(outcome);
        });
    }

    /// One attempt at a notice: `Ok` when the receiver answered 2xx.
    pub async fn deliver(&self, url: &str) -> Result<(), String> {
        let url = self
            .guard
            .check_url(url)
            .map_err(|error| format!("refused: {error}"))?;
        let response = self
            .client
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|error| crate::openrtb_http::describe(&error))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status().as_u16()))
        }
    }
}

fn count(kind: NoticeKind, outcome: &'static str) {
    metrics::counter!("cascade_notices_total", "kind" => kind.name(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn fires_in_the_background_and_reports_failures() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let router = Router::new()
            .route(
                "/ok",
                get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { "" }
                }),
            )
            .route(
                "/fail",
                get(|| async { axum::http::StatusCode::BAD_GATEWAY }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let adapter = OpenRtbHttpAdapter::new(
            &crate::guard::OutboundSettings::allowing_loopback()
                .guard()
                .unwrap(),
        );
        let notifier = Notifier::new(&adapter, 4, Duration::from_secs(1));
        notifier.fire(NoticeKind::Win, format!("http://{addr}/ok"));
        assert_eq!(
            notifier.deliver(&format!("http://{addr}/fail")).await,
            Err("HTTP 502".into())
        );
        assert_eq!(notifier.deliver(&format!("http://{addr}/ok")).await, Ok(()));
        let both = async {
            while hits.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .expect("the fired notice arrives");
    }
}
