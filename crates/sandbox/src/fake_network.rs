//! Scriptable fake ad networks: one HTTP server answering OpenRTB 2.6 bid requests at
//! `POST /openrtb/{network}`, each network behaving as scripted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use cascade_proto::customnetwork::v1::custom_network_server::{CustomNetwork, CustomNetworkServer};
use cascade_proto::customnetwork::v1::{AdRequest, AdResponse};

/// A notice a fake network received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// `win`, `bill` or `loss`.
    pub kind: String,
    /// The path and query it was sent to.
    pub uri: String,
    /// Whether it was answered 2xx.
    pub ok: bool,
}

impl Notice {
    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        let query = self.uri.split_once('?')?.1;
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }
}

/// How a fake network answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// A bid at the request's floor with a small ad.
    Fill,
    /// A bid at this CPM with a small ad.
    FillAt(f64),
    /// A bid with this ad: at `price` (the request's floor when `None`), declaring these
    /// advertiser domains and categories.
    FillWith {
        price: Option<f64>,
        adomain: Vec<String>,
        cat: Vec<String>,
    },
    /// A bid at the request's floor with no markup and this `nurl`, where the markup is
    /// to be fetched (as some waterfall networks answer).
    MarkupAt(String),
    /// HTTP 204.
    NoFill,
    /// HTTP 200 with an empty seatbid.
    EmptySeatbid,
    /// An HTTP error status.
    Error(u16),
    /// A body that is not JSON.
    Malformed,
    /// A 1 MiB body.
    Huge,
    /// Waits, then behaves as the inner behaviour.
    Slow(Duration, Box<Behaviour>),
    /// Waits a time drawn evenly between the two, anew for each call, then behaves as the
    /// inner behaviour: a network whose latency varies, as real ones do.
    SlowBetween(Duration, Duration, Box<Behaviour>),
    /// Starts an answer (status and the first bytes of the body), then drops the
    /// connection, as a network whose server crashes mid-answer.
    Reset,
}

impl Behaviour {
    /// Parses `fill`, `no-fill`, `empty`, `error`, `malformed`, `huge`, `reset` or `slow`
    /// (400 ms, then fill).
    /// Every behaviour [`Behaviour::parse`] knows by name.
    pub const NAMES: [&'static str; 8] = [
        "fill",
        "no-fill",
        "empty",
        "error",
        "malformed",
        "huge",
        "reset",
        "slow",
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "fill" => Behaviour::Fill,
            "no-fill" => Behaviour::NoFill,
            "empty" => Behaviour::EmptySeatbid,
            "error" => Behaviour::Error(500),
            "malformed" => Behaviour::Malformed,
            "huge" => Behaviour::Huge,
            "reset" => Behaviour::Reset,
            "slow" => Behaviour::Slow(Duration::from_millis(400), Box::new(Behaviour::Fill)),
            _ => return None,
        })
    }
}

#[derive(Default)]
struct Script {
    behaviours: HashMap<String, Behaviour>,
    calls: HashMap<String, usize>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
    /// The W3C `traceparent` of the last gRPC call, when it carried one.
    last_traceparent: Option<String>,
    /// The last OpenRTB request body each network received.
    last_request: HashMap<String, serde_json::Value>,
    /// Every notice received, per network.
    notices: HashMap<String, Vec<Notice>>,
    /// Networks whose bids carry win, billing and loss notice URLs.
    with_notices: std::collections::HashSet<String>,
    /// `http://host:port` of this server, for the notice URLs.
    base_url: String,
    /// Per network and notice kind: how many more notices fail with HTTP 503.
    failing_notices: HashMap<(String, String), usize>,
}

impl Script {
    fn call_started(&mut self, network: &str) -> Behaviour {
        *self.calls.entry(network.to_string()).or_default() += 1;
        let in_flight = self.in_flight.entry(network.to_string()).or_default();
        *in_flight += 1;
        let in_flight = *in_flight;
        let max = self.max_in_flight.entry(network.to_string()).or_default();
        *max = (*max).max(in_flight);
        self.behaviours
            .get(network)
            .cloned()
            .unwrap_or(Behaviour::Fill)
    }

    fn call_ended(&mut self, network: &str) {
        if let Some(in_flight) = self.in_flight.get_mut(network) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}

/// The fake networks' servers: OpenRTB over HTTP at `POST /openrtb/{network}`, and one
/// custom gRPC network (the `cascade.customnetwork.v1` contract) scripted under the name
/// [`GRPC_NETWORK`]. Networks not scripted fill.
#[derive(Clone)]
pub struct FakeNetworks {
    addr: SocketAddr,
    grpc_addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

/// The script name of the fake gRPC custom network.
pub const GRPC_NETWORK: &str = "customnet";

impl FakeNetworks {
    /// Starts the server on a free loopback port; it runs until the runtime stops.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_serving(None).await
    }

    /// As [`FakeNetworks::start`], the OpenRTB server over HTTPS with a certificate of
    /// `ca` (reach it as `https://localhost:{port}`).
    pub async fn start_tls(ca: &crate::TestCa) -> std::io::Result<Self> {
        Self::start_serving(Some(ca.acceptor())).await
    }

    async fn start_serving(tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let script = Arc::new(Mutex::new(Script {
            base_url: format!("{scheme}://{addr}"),
            ..Script::default()
        }));
        let router = Router::new()
            .route("/openrtb/{network}", post(answer))
            .route("/notice/{network}/{kind}", axum::routing::get(notice))
            .with_state(script.clone());
        match tls {
            Some(acceptor) => crate::tls::serve_tls(listener, router, acceptor),
            None => {
                tokio::spawn(async move {
                    // As a network's own server would: answers are not held back by Nagle.
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    if let Err(error) = axum::serve(listener, router).await {
                        tracing::error!(%error, "fake network server stopped");
                    }
                });
            }
        }
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let grpc = CustomNetworkServer::new(FakeGrpcNetwork {
            script: script.clone(),
        });
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(grpc)
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true)),
                )
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "fake gRPC network stopped");
            }
        });
        Ok(Self {
            addr,
            grpc_addr,
            script,
        })
    }

    /// `host:port` of the fake gRPC custom network, for `${DEMO_GRPC_NETWORK}`.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// `host:port`, for `${DEMO_NETWORK}` in configuration files.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, network: &str, behaviour: Behaviour) {
        self.script
            .lock()
            .behaviours
            .insert(network.to_string(), behaviour);
    }

    /// How many bid requests `network` received.
    pub fn calls(&self, network: &str) -> usize {
        self.script.lock().calls.get(network).copied().unwrap_or(0)
    }

    /// The `traceparent` metadata of the last call to the gRPC network, if it had one.
    pub fn last_traceparent(&self) -> Option<String> {
        self.script.lock().last_traceparent.clone()
    }

    /// The last OpenRTB bid request `network` received.
    pub fn last_request(&self, network: &str) -> Option<serde_json::Value> {
        self.script.lock().last_request.get(network).cloned()
    }

    /// The notices `network` received, in order.
    pub fn notices(&self, network: &str) -> Vec<Notice> {
        self.script
            .lock()
            .notices
            .get(network)
            .cloned()
            .unwrap_or_default()
    }

    /// From now on, `network`'s bids carry a win (`nurl`), billing (`burl`) and loss
    /// (`lurl`) notice URL back to this server, with every OpenRTB macro in its query.
    pub fn send_notices(&self, network: &str) {
        self.script.lock().with_notices.insert(network.to_string());
    }

    /// The next `count` notices of `kind` to `network` fail with HTTP 503.
    pub fn fail_notices(&self, network: &str, kind: &str, count: usize) {
        self.script
            .lock()
            .failing_notices
            .insert((network.to_string(), kind.to_string()), count);
    }

    /// The most calls `network` had in flight at once.
    pub fn max_in_flight(&self, network: &str) -> usize {
        self.script
            .lock()
            .max_in_flight
            .get(network)
            .copied()
            .unwrap_or(0)
    }
}

struct FakeGrpcNetwork {
    script: Arc<Mutex<Script>>,
}

#[tonic::async_trait]
impl CustomNetwork for FakeGrpcNetwork {
    async fn request_ad(
        &self,
        request: tonic::Request<AdRequest>,
    ) -> Result<tonic::Response<AdResponse>, tonic::Status> {
        let lock = || self.script.lock();
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(String::from);
        let behaviour = {
            let mut script = lock();
            script.last_traceparent = traceparent;
            script.call_started(GRPC_NETWORK)
        };
        let response = respond_grpc(request.into_inner(), behaviour).await;
        lock().call_ended(GRPC_NETWORK);
        response
    }
}

async fn respond_grpc(
    request: AdRequest,
    mut behaviour: Behaviour,
) -> Result<tonic::Response<AdResponse>, tonic::Status> {
    behaviour = wait_out(behaviour).await;
    let fill = |price_micros: i64| AdResponse {
        filled: true,
        price_micros,
        adm: format!(
            "<div class=\"ad\">{GRPC_NETWORK} ad for {}</div>",
            request.placement_id
        ),
        adomain: vec![format!("{GRPC_NETWORK}.example")],
        crid: format!("{GRPC_NETWORK}-creative-1"),
        ..Default::default()
    };
    match behaviour {
        Behaviour::Fill => Ok(tonic::Response::new(fill(request.floor_micros))),
        Behaviour::FillAt(price)
        | Behaviour::FillWith {
            price: Some(price), ..
        } => Ok(tonic::Response::new(fill((price * 1e6).round() as i64))),
        Behaviour::FillWith { price: None, .. } => {
            Ok(tonic::Response::new(fill(request.floor_micros)))
        }
        Behaviour::NoFill | Behaviour::EmptySeatbid => {
            Ok(tonic::Response::new(AdResponse::default()))
        }
        _ => Err(tonic::Status::internal("scripted failure")),
    }
}

/// A win, billing or loss notice at `GET /notice/{network}/{kind}`: recorded, then
/// answered 200 unless scripted to fail.
async fn notice(
    State(script): State<Arc<Mutex<Script>>>,
    Path((network, kind)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> StatusCode {
    let mut script = script.lock();
    let status = match script
        .failing_notices
        .get_mut(&(network.clone(), kind.clone()))
    {
        Some(left) if *left > 0 => {
            *left -= 1;
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::OK,
    };
    script.notices.entry(network).or_default().push(Notice {
        kind,
        uri: uri.to_string(),
        ok: status.is_success(),
    });
    status
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    Path(network): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let lock = || script.lock();
    let (behaviour, notice_base) = {
        let mut script = lock();
        let notices = script
            .with_notices
            .contains(&network)
            .then(|| format!("{}/notice/{network}", script.base_url));
        (script.call_started(&network), notices)
    };
    let response = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(request) => {
            lock().last_request.insert(network.clone(), request.clone());
            respond(&network, &request, behaviour, notice_base.as_deref()).await
        }
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    };
    lock().call_ended(&network);
    response
}

/// Every OpenRTB macro, as a query string a receiver can read back.
const NOTICE_MACROS: &str = "auction=${AUCTION_ID}&bid=${AUCTION_BID_ID}&imp=${AUCTION_IMP_ID}\
    &seat=${AUCTION_SEAT_ID}&ad=${AUCTION_AD_ID}&price=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}\
    &mbr=${AUCTION_MBR}&loss=${AUCTION_LOSS}&min=${AUCTION_MIN_TO_WIN}";

async fn respond(
    network: &str,
    request: &serde_json::Value,
    mut behaviour: Behaviour,
    notice_base: Option<&str>,
) -> Response {
    behaviour = wait_out(behaviour).await;
    let imp = &request["imp"][0];
    let price = match &behaviour {
        Behaviour::FillAt(price)
        | Behaviour::FillWith {
            price: Some(price), ..
        } => serde_json::json!(price),
        _ => imp["bidfloor"].clone(),
    };
    // It answers in the currency it was asked in, as a network does.
    let cur = request["cur"][0].as_str().unwrap_or("USD").to_string();
    let (adomain, cat) = match &behaviour {
        Behaviour::FillWith { adomain, cat, .. } => (adomain.clone(), cat.clone()),
        _ => (vec![format!("{network}.example")], Vec::new()),
    };
    match behaviour {
        Behaviour::Fill | Behaviour::FillAt(_) | Behaviour::FillWith { .. } => axum::Json(serde_json::json!({
            "id": request["id"],
            "cur": cur,
            "seatbid": [{
                "seat": network,
                "bid": [{
                    "id": format!("{network}-bid"),
                    "impid": imp["id"],
                    "price": price,
                    "adm": format!("<div class=\"ad\">{network} ad for {}</div>", imp["tagid"].as_str().unwrap_or("")),
                    "adomain": adomain,
                    "cat": cat,
                    "crid": format!("{network}-creative-1"),
                    "adid": format!("{network}-ad-1"),
                    "nurl": notice_base.map(|base| format!("{base}/win?{NOTICE_MACROS}")),
                    "burl": notice_base.map(|base| format!("{base}/bill?{NOTICE_MACROS}")),
                    "lurl": notice_base.map(|base| format!("{base}/loss?{NOTICE_MACROS}")),
                }],
            }],
            "bidid": format!("{network}-response"),
        }))
        .into_response(),
        Behaviour::MarkupAt(nurl) => axum::Json(serde_json::json!({
            "id": request["id"],
            "cur": cur,
            "seatbid": [{"seat": network, "bid": [{
                "id": format!("{network}-bid"), "impid": imp["id"], "price": price,
                "adomain": adomain, "crid": format!("{network}-creative-1"), "nurl": nurl,
            }]}],
        }))
        .into_response(),
        Behaviour::NoFill => StatusCode::NO_CONTENT.into_response(),
        Behaviour::EmptySeatbid => axum::Json(serde_json::json!({"id": request["id"], "seatbid": []})).into_response(),
        Behaviour::Error(status) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Behaviour::Malformed => "{\"id\": \"truncated".into_response(),
        Behaviour::Huge => format!("{{\"id\": \"{}\"}}", "x".repeat(1024 * 1024)).into_response(),
        Behaviour::Reset => {
            let cut_short = futures::stream::iter([
                Ok(bytes::Bytes::from_static(b"{\"id\": \"")),
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            ]);
            Response::new(axum::body::Body::from_stream(cut_short))
        }
        Behaviour::Slow(..) | Behaviour::SlowBetween(..) => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Waits as the slow behaviours say; the behaviour to answer with after.
async fn wait_out(mut behaviour: Behaviour) -> Behaviour {
    loop {
        behaviour = match behaviour {
            Behaviour::Slow(delay, then) => {
                tokio::time::sleep(delay).await;
                *then
            }
            Behaviour::SlowBetween(shortest, longest, then) => {
                use std::hash::BuildHasher as _;
                // Each RandomState has keys of its own: a fresh draw per call.
                let draw = std::collections::hash_map::RandomState::new().hash_one(0_u8);
                let spread = longest.saturating_sub(shortest).as_micros() as u64;
                let delay = shortest + Duration::from_micros(draw % spread.max(1));
                tokio::time::sleep(delay).await;
                *then
            }
            other => return other,
        }
    }
}
