use std::time::Duration;

use cascade_core::Micros;
use cascade_proto::openrtb::v1::BidResponse;

use crate::{Ad, AdCall, AdOutcome};

/// Largest response body accepted from a network; a bigger one is that network's error.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024;

/// OpenRTB 2.6 over HTTP/JSON: POST a bid request with the one impression; HTTP 204 or
/// a response without a bid for it means no fill.
#[derive(Clone, Debug)]
pub struct OpenRtbHttpAdapter {
    client: reqwest::Client,
}

impl Default for OpenRtbHttpAdapter {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenRtbHttpAdapter {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_else(|error| {
                tracing::error!(%error, "cannot build the tuned HTTP client; using defaults");
                reqwest::Client::new()
            });
        Self { client }
    }

    pub async fn request_ad(&self, call: &AdCall<'_>) -> AdOutcome {
        let body = match serde_json::to_vec(&crate::single_impression_request(call)) {
            Ok(body) => body,
            Err(error) => return AdOutcome::Error(format!("cannot encode request: {error}")),
        };
        match tokio::time::timeout(call.timeout, self.exchange(call, body)).await {
            Ok(outcome) => outcome,
            Err(_) => AdOutcome::Timeout,
        }
    }

    async fn exchange(&self, call: &AdCall<'_>, body: Vec<u8>) -> AdOutcome {
        let response = self
            .client
            .post(call.endpoint)
            .header("content-type", "application/json")
            .header("x-openrtb-version", "2.6")
            .body(body)
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) => return AdOutcome::Error(describe(&error)),
        };
        match response.status().as_u16() {
            204 => return AdOutcome::NoFill,
            200 => {}
            status => return AdOutcome::Error(format!("HTTP {status}")),
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
        {
            return AdOutcome::Error(format!("response body over {MAX_RESPONSE_BYTES} bytes"));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return AdOutcome::Error(format!(
                            "response body over {MAX_RESPONSE_BYTES} bytes"
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => return AdOutcome::Error(describe(&error)),
            }
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return AdOutcome::NoFill;
        }
        match serde_json::from_slice::<BidResponse>(&body) {
            Ok(bid_response) => best_ad(bid_response, call.impid, call.currency()),
            Err(error) => AdOutcome::Error(format!("malformed bid response: {error}")),
        }
    }
}

/// The best bid for `impid`; prices are in the response's `cur`, or in `asked_in` (the
/// currency the request named) when it names none.
fn best_ad(response: BidResponse, impid: &str, asked_in: &str) -> AdOutcome {
    let cur = if response.cur.is_empty() {
        asked_in.to_string()
    } else {
        response.cur
    };
    let best = response
        .seatbid
        .into_iter()
        .flat_map(|seat| seat.bid)
        .filter(|bid| bid.impid == impid)
        .filter_map(|bid| {
            Micros::from_openrtb_price(bid.price)
                .ok()
                .map(|price| (price, bid))
        })
        .max_by_key(|(price, _)| *price);
    match best {
        None => AdOutcome::NoFill,
        Some((_, bid)) if bid.adm.is_empty() && bid.nurl.is_empty() => {
            AdOutcome::Error("bid has neither adm nor nurl".to_string())
        }
        Some((price, bid)) => AdOutcome::Filled(Ad {
            bid_id: bid.id,
            price: Some(price),
            adm: bid.adm,
            nurl: bid.nurl,
            adomain: bid.adomain,
            crid: bid.crid,
            cat: bid.cat,
            attr: bid.attr,
            cur,
        }),
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "connection failed".to_string()
    } else if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use cascade_proto::openrtb::v1::{BidRequest, Imp};

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}/ad")
    }

    fn request() -> BidRequest {
        BidRequest {
            id: "r1".into(),
            imp: vec![
                Imp {
                    id: "1".into(),
                    tagid: "publisher-tag".into(),
                    ..Default::default()
                },
                Imp {
                    id: "2".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    async fn call(endpoint: &str, timeout_ms: u64) -> AdOutcome {
        let request = request();
        OpenRtbHttpAdapter::new()
            .request_ad(&AdCall {
                endpoint,
                placement_id: "net-placement",
                floor: Micros(2_000_000),
                currency: "",
                request: &request,
                impid: "1",
                timeout: Duration::from_millis(timeout_ms),
            })
            .await
    }

    #[tokio::test]
    async fn sends_one_impression_with_placement_and_floor_and_reads_the_ad() {
        let endpoint = serve(Router::new().route(
            "/ad",
            post(|body: axum::Json<serde_json::Value>| async move {
                assert_eq!(body["imp"].as_array().unwrap().len(), 1);
                assert_eq!(body["imp"][0]["tagid"], "net-placement");
                assert_eq!(body["imp"][0]["bidfloor"], 2.0);
                assert!(body.get("site").is_none(), "absent objects are left out");
                axum::Json(serde_json::json!({
                    "id": "r1",
                    "seatbid": [{"bid": [
                        {"id": "b1", "impid": "1", "price": 2.1, "adm": "<a/>"},
                        {"id": "b2", "impid": "1", "price": 2.5, "adm": "<b/>", "ext": {"x": 1}}
                    ]}]
                }))
            }),
        ))
        .await;
        let AdOutcome::Filled(ad) = call(&endpoint, 1_000).await else {
            panic!("expected a fill");
        };
        assert_eq!(
            (ad.bid_id.as_str(), ad.price, ad.adm.as_str()),
            ("b2", Some(Micros(2_500_000)), "<b/>")
        );
    }

    #[tokio::test]
    async fn reads_gzip_compressed_answers() {
        use std::io::Write;
        let body = serde_json::json!({
            "id": "r1",
            "seatbid": [{"bid": [{"id": "b1", "impid": "1", "price": 3.0, "adm": "<zipped/>"}]}]
        });
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(body.to_string().as_bytes()).unwrap();
        let compressed = encoder.finish().unwrap();
        let endpoint = serve(Router::new().route(
            "/ad",
            post(move |headers: axum::http::HeaderMap| {
                let compressed = compressed.clone();
                async move {
                    let accepts_gzip = headers
                        .get("accept-encoding")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("gzip"));
                    assert!(accepts_gzip, "the adapter asks for gzip");
                    ([("content-encoding", "gzip")], compressed)
                }
            }),
        ))
        .await;
        let AdOutcome::Filled(ad) = call(&endpoint, 1_000).await else {
            panic!("expected a fill");
        };
        assert_eq!(ad.adm, "<zipped/>");
    }

    #[tokio::test]
    async fn no_content_and_empty_seatbid_are_no_fill() {
        let endpoint =
            serve(Router::new().route("/ad", post(|| async { StatusCode::NO_CONTENT }))).await;
        assert_eq!(call(&endpoint, 1_000).await, AdOutcome::NoFill);
        let endpoint = serve(Router::new().route(
            "/ad",
            post(|| async { axum::Json(serde_json::json!({"id": "r1", "seatbid": []})) }),
        ))
        .await;
        assert_eq!(call(&endpoint, 1_000).await, AdOutcome::NoFill);
    }

    #[tokio::test]
    async fn slow_malformed_failing_and_huge_answers_are_the_networks_fault() {
        let slow = serve(Router::new().route(
            "/ad",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                StatusCode::NO_CONTENT
            }),
        ))
        .await;
        assert_eq!(call(&slow, 50).await, AdOutcome::Timeout);

        let malformed = serve(Router::new().route("/ad", post(|| async { "{not json" }))).await;
        assert!(
            matches!(call(&malformed, 1_000).await, AdOutcome::Error(e) if e.contains("malformed"))
        );

        let failing =
            serve(Router::new().route("/ad", post(|| async { StatusCode::BAD_GATEWAY }))).await;
        assert_eq!(
            call(&failing, 1_000).await,
            AdOutcome::Error("HTTP 502".into())
        );

        let huge = serve(
            Router::new().route("/ad", post(|| async { "x".repeat(MAX_RESPONSE_BYTES + 1) })),
        )
        .await;
        assert!(matches!(call(&huge, 1_000).await, AdOutcome::Error(e) if e.contains("over")));

        let refused = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            format!("http://{addr}/ad")
        };
        assert_eq!(
            call(&refused, 1_000).await,
            AdOutcome::Error("connection failed".into())
        );
    }
}
