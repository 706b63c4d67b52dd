use std::time::Duration;

use cascade_core::Micros;
use cascade_core::notice::{AuctionFacts, substitute};
use cascade_proto::openrtb::v1::BidResponse;

use crate::guard::OutboundGuard;
use crate::{Ad, AdCall, AdOutcome};

/// Largest response body accepted from a network; a bigger one is that network's error.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024;

/// OpenRTB 2.6 over HTTP/JSON: POST a bid request with the one impression; HTTP 204 or
/// a response without a bid for it means no fill.
#[derive(Clone, Debug)]
pub struct OpenRtbHttpAdapter {
    client: reqwest::Client,
    guard: OutboundGuard,
}

impl Default for OpenRtbHttpAdapter {
    /// Public addresses only.
    fn default() -> Self {
        Self::new(&OutboundGuard::default())
    }
}

impl OpenRtbHttpAdapter {
    /// HTTPS by rustls, trusting the platform's roots, Mozilla's, and those of the file
    /// `SSL_CERT_FILE` names (the usual convention, so a private CA can be added); every
    /// request (and its redirects) only where `guard` lets it go.
    pub fn new(guard: &OutboundGuard) -> Self {
        let mut builder = guard
            .client_builder()
            .user_agent(concat!("cascade/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1));
        for root in extra_roots() {
            builder = builder.add_root_certificate(root);
        }
        let client = builder.build().unwrap_or_else(|error| {
            tracing::error!(%error, "cannot build the tuned HTTP client; using a guarded default");
            guard
                .client_builder()
                .build()
                .expect("a client with no TLS roots of ours builds")
        });
        Self {
            client,
            guard: guard.clone(),
        }
    }

    /// The HTTP client, shared with the notices sent to the same networks (it resolves
    /// through the same guard).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn guard(&self) -> &OutboundGuard {
        &self.guard
    }

    pub async fn request_ad(&self, call: &AdCall<'_>) -> AdOutcome {
        let body = match serde_json::to_vec(call.request) {
            Ok(body) => body,
            Err(error) => return AdOutcome::Error(format!("cannot encode request: {error}")),
        };
        match tokio::time::timeout(call.timeout, self.exchange(call, body)).await {
            Ok(outcome) => outcome,
            Err(_) => AdOutcome::Timeout,
        }
    }

    async fn exchange(&self, call: &AdCall<'_>, body: Vec<u8>) -> AdOutcome {
        let endpoint = match self.guard.check_url(call.endpoint) {
            Ok(endpoint) => endpoint,
            Err(error) => return AdOutcome::Error(format!("endpoint refused: {error}")),
        };
        let response = self
            .client
            .post(endpoint)
            .header("content-type", "application/json")
            .header("x-openrtb-version", "2.6")
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return AdOutcome::Error(describe(&error)),
        };
        match response.status().as_u16() {
            204 => return AdOutcome::NoFill,
            200 => {}
            status => return AdOutcome::Error(format!("HTTP {status}")),
        }
        let body = match read_limited(response).await {
            Ok(body) => body,
            Err(error) => return AdOutcome::Error(error),
        };
        let mut outcome = read_answer(&body, call);
        if let AdOutcome::Filled(ad) = &mut outcome
            && ad.adm.is_empty()
            && call.markup_from_nurl
        {
            {
                // The markup is served on the win notice: fetching it is the notice.
                let url = notice_url(&ad.nurl, call, ad);
                match self.fetch_markup(&url).await {
                    Ok(adm) if !adm.trim().is_empty() => {
                        ad.adm = adm;
                        ad.nurl_fired = true;
                    }
                    Ok(_) => return AdOutcome::Error("nurl returned no markup".to_string()),
                    Err(error) => return AdOutcome::Error(format!("nurl: {error}")),
                }
            }
        }
        outcome
    }

    async fn fetch_markup(&self, url: &str) -> Result<String, String> {
        let url = self
            .guard
            .check_url(url)
            .map_err(|error| format!("refused: {error}"))?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let body = read_limited(response).await?;
        String::from_utf8(body).map_err(|_| "markup is not UTF-8".to_string())
    }
}

/// The roots of `SSL_CERT_FILE`, added to the built-in ones; a file that cannot be read
/// is logged and ignored.
fn extra_roots() -> Vec<reqwest::Certificate> {
    let Some(path) = std::env::var_os("SSL_CERT_FILE") else {
        return Vec::new();
    };
    match std::fs::read(&path).map(|pem| reqwest::Certificate::from_pem_bundle(&pem)) {
        Ok(Ok(roots)) => roots,
        Ok(Err(error)) => {
            tracing::warn!(path = ?path, %error, "SSL_CERT_FILE holds no usable certificate");
            Vec::new()
        }
        Err(error) => {
            tracing::warn!(path = ?path, %error, "cannot read SSL_CERT_FILE");
            Vec::new()
        }
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(format!("response body over {MAX_RESPONSE_BYTES} bytes"));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(format!("response body over {MAX_RESPONSE_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => return Err(describe(&error)),
        }
    }
}

/// The win notice URL with its macros: the network is booked at its own price.
fn notice_url(nurl: &str, call: &AdCall<'_>, ad: &Ad) -> String {
    let facts = AuctionFacts {
        auction_id: call.request["id"].as_str().unwrap_or_default(),
        bid_id: &ad.bid_id,
        imp_id: call.impid,
        seat_id: &ad.seat,
        ad_id: &ad.adid,
        price: ad.price,
        currency: &ad.cur,
        bid_price: ad.price,
        ..Default::default()
    };
    substitute(nurl, &facts)
}

/// Media objects in the order of OpenRTB's `mtype` codes 1 to 4.
const MARKUP_TYPES: [&str; 4] = ["banner", "video", "audio", "native"];

/// The best bid for the call's impression whose `mtype`, when stated, is a medium the
/// impression offers; prices are in the response's `cur`, or in the currency the request
/// named when it names none. An answer with no bid but a reason is `Declined`.
/// What a network's `200` answer body says: no ad (empty), a malformed answer (the
/// network's fault), or its best ad for the call. Pure: every byte a network may send
/// goes through here (and through the fuzz target of the same name).
pub fn read_answer(body: &[u8], call: &AdCall<'_>) -> AdOutcome {
    if body.iter().all(u8::is_ascii_whitespace) {
        return AdOutcome::NoFill;
    }
    match serde_json::from_slice::<BidResponse>(body) {
        Ok(bid_response) => best_ad(bid_response, call),
        Err(error) => AdOutcome::Error(format!("malformed bid response: {error}")),
    }
}

fn best_ad(response: BidResponse, call: &AdCall<'_>) -> AdOutcome {
    let cur = if response.cur.is_empty() {
        call.currency().to_string()
    } else {
        response.cur
    };
    let imp = call.request["imp"]
        .as_array()
        .and_then(|imps| imps.iter().find(|imp| imp["id"] == call.impid));
    let offers = |mtype: i32| {
        usize::try_from(mtype - 1)
            .ok()
            .and_then(|i| MARKUP_TYPES.get(i))
            .is_some_and(|media| imp.is_some_and(|imp| imp.get(*media).is_some()))
    };
    let bidid = response.bidid;
    let mut wrong_media = None;
    let best = response
        .seatbid
        .into_iter()
        .flat_map(|seat| {
            let name = seat.seat;
            seat.bid.into_iter().map(move |bid| (name.clone(), bid))
        })
        .filter(|(_, bid)| bid.impid == call.impid)
        .filter(|(_, bid)| match bid.mtype {
            Some(mtype) if !offers(mtype) => {
                wrong_media = Some(mtype);
                false
            }
            _ => true,
        })
        .filter_map(|(seat, bid)| {
            Micros::from_openrtb_price(bid.price)
                .ok()
                .map(|price| (price, seat, bid))
        })
        .max_by_key(|(price, _, _)| *price);
    match best {
        None => match (wrong_media, response.nbr) {
            (Some(mtype), _) => AdOutcome::Error(format!(
                "bid mtype {mtype} is a medium the impression does not offer"
            )),
            (None, Some(nbr)) => AdOutcome::Declined(nbr),
            (None, None) => AdOutcome::NoFill,
        },
        Some((_, _, bid)) if bid.adm.is_empty() && bid.nurl.is_empty() => {
            AdOutcome::Error("bid has neither adm nor nurl".to_string())
        }
        Some((price, seat, bid)) => {
            let dsa = cascade_proto::openrtb_json::declares_dsa(&bid);
            AdOutcome::Filled(Box::new(Ad {
                bid_id: if bidid.is_empty() {
                    bid.id.clone()
                } else {
                    bidid
                },
                price: Some(price),
                adm: bid.adm,
                nurl: bid.nurl,
                burl: bid.burl,
                lurl: bid.lurl,
                nurl_fired: false,
                exp: bid.exp.and_then(|exp| u32::try_from(exp).ok()),
                adomain: bid.adomain,
                crid: bid.crid,
                adid: bid.adid,
                dealid: bid.dealid,
                dsa,
                seat,
                cat: bid.cat,
                attr: bid.attr,
                cur,
            }))
        }
    }
}

/// What an attempt's detail says of a transport failure; a TLS failure says so, with
/// rustls's reason (an unknown issuer, a name mismatch).
pub(crate) fn describe(error: &reqwest::Error) -> String {
    if let Some(refused) = crate::guard::refusal(error) {
        return format!("refused: {refused}");
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let tls = causes.iter().find(|cause| {
        cause.contains("certificate") || cause.contains("tls") || cause.contains("TLS")
    });
    if let Some(tls) = tls {
        format!("TLS failed: {tls}")
    } else if error.is_connect() {
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
    use cascade_core::ad_quality::{AdQuality, Taxonomy};
    use cascade_core::privacy::Permissions;

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}/ad")
    }

    /// The request a network is sent for impression 1 of a two-impression request.
    fn request() -> serde_json::Value {
        let document = serde_json::json!({
            "id": "r1",
            "imp": [{"id": "1", "tagid": "publisher-tag", "banner": {"w": 300, "h": 250}}, {"id": "2"}]
        });
        let quality = AdQuality {
            blocked_adomains: &[],
            blocked_categories: &[],
            blocked_seats: &[],
            blocked_attributes: &[],
            taxonomy: Taxonomy::from_cattax(1),
            block_unknown_adomain: false,
            block_unknown_category: false,
            dsa_required: false,
            index: None,
        };
        crate::outbound::network_request(
            &document,
            &crate::outbound::Rewrites {
                impid: "1",
                placement_id: "net-placement",
                floor: 2.0,
                currency: "USD",
                tmax_ms: 100,
                quality: &quality,
                params: None,
                params_at: "",
                schain_node: None,
                permissions: &Permissions::ALL,
                keep_deals: false,
                eid_allowed: &|_| true,
            },
        )
        .0
    }

    async fn call(endpoint: &str, timeout_ms: u64) -> AdOutcome {
        call_with(endpoint, timeout_ms, true).await
    }

    async fn call_with(endpoint: &str, timeout_ms: u64, markup_from_nurl: bool) -> AdOutcome {
        let request = request();
        OpenRtbHttpAdapter::new(
            &crate::guard::OutboundSettings::allowing_loopback()
                .guard()
                .unwrap(),
        )
        .request_ad(&AdCall {
            endpoint,
            placement_id: "net-placement",
            floor: Micros(2_000_000),
            currency: "",
            request: &request,
            impid: "1",
            timeout: Duration::from_millis(timeout_ms),
            markup_from_nurl,
        })
        .await
    }

    #[tokio::test]
    async fn sends_one_impression_with_placement_and_floor_and_reads_the_ad() {
        let endpoint = serve(Router::new().route(
            "/ad",
            post(|headers: axum::http::HeaderMap, body: axum::Json<serde_json::Value>| async move {
                assert!(headers["user-agent"].to_str().unwrap().starts_with("cascade/"));
                assert_eq!(body["imp"].as_array().unwrap().len(), 1);
                assert_eq!(body["imp"][0]["tagid"], "net-placement");
                assert_eq!(body["imp"][0]["bidfloor"], 2.0);
                assert!(body.get("site").is_none(), "absent objects are left out");
                axum::Json(serde_json::json!({
                    "id": "r1",
                    "seatbid": [{"bid": [
                        {"id": "b1", "impid": "1", "price": 2.1, "adm": "<a/>"},
                        {"id": "b2", "impid": "1", "price": "2.5", "adm": "<b/>", "ext": {"x": 1}}
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

    #[tokio::test]
    async fn a_no_bid_reason_is_kept() {
        let endpoint = serve(Router::new().route(
            "/ad",
            post(|| async { axum::Json(serde_json::json!({"id": "r1", "nbr": 8})) }),
        ))
        .await;
        assert_eq!(call(&endpoint, 1_000).await, AdOutcome::Declined(8));
    }

    #[tokio::test]
    async fn a_bid_for_a_medium_the_impression_does_not_offer_is_refused() {
        let endpoint = serve(Router::new().route(
            "/ad",
            post(|| async {
                axum::Json(serde_json::json!({"id": "r1", "seatbid": [{"bid": [
                    {"id": "v", "impid": "1", "price": 9.0, "adm": "<VAST/>", "mtype": 2},
                    {"id": "b", "impid": "1", "price": 1.0, "adm": "<b/>", "mtype": 1}
                ]}]}))
            }),
        ))
        .await;
        let AdOutcome::Filled(ad) = call(&endpoint, 1_000).await else {
            panic!("the banner bid serves");
        };
        assert_eq!(ad.bid_id, "b");
    }

    #[tokio::test]
    async fn markup_is_fetched_from_nurl_only_when_asked() {
        let router = Router::new()
            .route(
                "/ad",
                post(|headers: axum::http::HeaderMap| async move {
                    let host = headers["host"].to_str().unwrap().to_string();
                    axum::Json(serde_json::json!({"id": "r1", "bidid": "resp-1", "seatbid": [{"seat": "s1", "bid": [
                        {"id": "b", "impid": "1", "price": 2.25,
                         "nurl": format!("http://{host}/markup?p=${{AUCTION_PRICE}}&b=${{AUCTION_BID_ID}}")}
                    ]}]}))
                }),
            )
            .route(
                "/markup",
                axum::routing::get(|query: axum::extract::RawQuery| async move {
                    format!("<ad q='{}'/>", query.0.unwrap_or_default())
                }),
            );
        let endpoint = serve(router).await;
        let AdOutcome::Filled(ad) = call(&endpoint, 1_000).await else {
            panic!("expected a fill");
        };
        assert_eq!(ad.adm, "<ad q='p=2.25&b=resp-1'/>");
        assert!(ad.nurl_fired);
        let AdOutcome::Filled(ad) = call_with(&endpoint, 1_000, false).await else {
            panic!("expected a fill");
        };
        assert!(
            ad.adm.is_empty() && !ad.nurl_fired,
            "a live bid's nurl is not fetched"
        );
    }
}
