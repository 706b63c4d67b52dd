//! Scriptable fake ad networks: one HTTP server answering OpenRTB 2.6 bid requests at
//! `POST /openrtb/{network}`, each network behaving as scripted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// How a fake network answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// A bid at the request's floor with a small ad.
    Fill,
    /// A bid at this CPM with a small ad.
    FillAt(f64),
    /// HTTP 204.
    NoFill,
    /// HTTP 200 with an empty seatbid.
    EmptySeatbid,
    /// An HTTP error status.
    Error(u16),
    /// A body that is not JSON.
    Malformed,
    /// Waits, then behaves as the inner behaviour.
    Slow(Duration, Box<Behaviour>),
}

impl Behaviour {
    /// Parses `fill`, `no-fill`, `empty`, `error`, `malformed` or `slow` (400 ms, then fill).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "fill" => Behaviour::Fill,
            "no-fill" => Behaviour::NoFill,
            "empty" => Behaviour::EmptySeatbid,
            "error" => Behaviour::Error(500),
            "malformed" => Behaviour::Malformed,
            "slow" => Behaviour::Slow(Duration::from_millis(400), Box::new(Behaviour::Fill)),
            _ => return None,
        })
    }
}

#[derive(Default)]
struct Script {
    behaviours: HashMap<String, Behaviour>,
    calls: HashMap<String, usize>,
}

/// The fake networks' server. Networks not scripted fill.
#[derive(Clone)]
pub struct FakeNetworks {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl FakeNetworks {
    /// Starts the server on a free loopback port; it runs until the runtime stops.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script::default()));
        let router = Router::new()
            .route("/openrtb/{network}", post(answer))
            .with_state(script.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "fake network server stopped");
            }
        });
        Ok(Self { addr, script })
    }

    /// `host:port`, for `${DEMO_NETWORK}` in configuration files.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, network: &str, behaviour: Behaviour) {
        self.lock()
            .behaviours
            .insert(network.to_string(), behaviour);
    }

    /// How many bid requests `network` received.
    pub fn calls(&self, network: &str) -> usize {
        self.lock().calls.get(network).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    Path(network): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let behaviour = {
        let mut script = script
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *script.calls.entry(network.clone()).or_default() += 1;
        script
            .behaviours
            .get(&network)
            .cloned()
            .unwrap_or(Behaviour::Fill)
    };
    let request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    respond(&network, &request, behaviour).await
}

async fn respond(network: &str, request: &serde_json::Value, mut behaviour: Behaviour) -> Response {
    while let Behaviour::Slow(delay, then) = behaviour {
        tokio::time::sleep(delay).await;
        behaviour = *then;
    }
    let imp = &request["imp"][0];
    let price = match behaviour {
        Behaviour::FillAt(price) => serde_json::json!(price),
        _ => imp["bidfloor"].clone(),
    };
    match behaviour {
        Behaviour::Fill | Behaviour::FillAt(_) => axum::Json(serde_json::json!({
            "id": request["id"],
            "cur": "USD",
            "seatbid": [{
                "seat": network,
                "bid": [{
                    "id": format!("{network}-bid"),
                    "impid": imp["id"],
                    "price": price,
                    "adm": format!("<div class=\"ad\">{network} ad for {}</div>", imp["tagid"].as_str().unwrap_or("")),
                    "adomain": [format!("{network}.example")],
                    "crid": format!("{network}-creative-1"),
                }],
            }],
        }))
        .into_response(),
        Behaviour::NoFill => StatusCode::NO_CONTENT.into_response(),
        Behaviour::EmptySeatbid => axum::Json(serde_json::json!({"id": request["id"], "seatbid": []})).into_response(),
        Behaviour::Error(status) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Behaviour::Malformed => "{\"id\": \"truncated".into_response(),
        Behaviour::Slow(..) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
