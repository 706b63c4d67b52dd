use parking_lot::Mutex;
use std::collections::HashMap;

use cascade_core::Micros;
use cascade_proto::customnetwork::v1::custom_network_client::CustomNetworkClient;
use cascade_proto::customnetwork::v1::{AdRequest, AdResponse};
use cascade_proto::openrtb::v1::BidRequest;
use serde::Deserialize as _;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::guard::OutboundGuard;
use crate::{Ad, AdCall, AdOutcome, MAX_RESPONSE_BYTES};

/// Custom networks over our gRPC contract (`cascade.customnetwork.v1.CustomNetwork`).
/// One HTTP/2 channel per endpoint, opened lazily and kept; its connections go only to
/// addresses the guard permits.
#[derive(Debug, Default)]
pub struct GrpcNetworkAdapter {
    channels: Mutex<HashMap<String, Channel>>,
    guard: OutboundGuard,
}

impl GrpcNetworkAdapter {
    pub fn new(guard: &OutboundGuard) -> Self {
        GrpcNetworkAdapter {
            channels: Mutex::default(),
            guard: guard.clone(),
        }
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        self.guard
            .check_url(endpoint)
            .map_err(|error| format!("endpoint refused: {error}"))?;
        let guard = self.guard.clone();
        // Every connection resolves the host through the guard, so a name re-bound to
        // an internal address is refused when the channel reconnects.
        let connector = tower::service_fn(move |uri: http::Uri| {
            let guard = guard.clone();
            async move {
                let host = uri.host().unwrap_or_default();
                let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                    Some("https") => 443,
                    _ => 80,
                });
                let addrs = guard.resolve(host, port).await.map_err(|error| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, error)
                })?;
                let stream = tokio::net::TcpStream::connect(addrs.as_slice()).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|error| format!("invalid endpoint: {error}"))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .connect_with_connector_lazy(connector);
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    pub async fn request_ad(&self, call: &AdCall<'_>) -> AdOutcome {
        let channel = match self.channel(call.endpoint) {
            Ok(channel) => channel,
            Err(error) => return AdOutcome::Error(error),
        };
        // The call carries the attempt's trace context, so a network that traces joins
        // the decision's trace.
        let peer = cascade_server::telemetry::Peer::of_endpoint(call.endpoint);
        let mut client = CustomNetworkClient::new(cascade_server::telemetry::traced(channel, peer))
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        // The same request an OpenRTB network gets, in its typed form: members outside
        // OpenRTB 2.6 have no field there (ext objects do).
        let bid_request = match BidRequest::deserialize(call.request) {
            Ok(bid_request) => bid_request,
            Err(error) => return AdOutcome::Error(format!("cannot encode request: {error}")),
        };
        let mut request = tonic::Request::new(AdRequest {
            request_id: format!("{}:{}", bid_request.id, call.impid),
            placement_id: call.placement_id.to_string(),
            floor_micros: call.floor.0,
            cur: call.currency().to_string(),
            request: Some(bid_request),
        });
        request.set_timeout(call.timeout);
        let response = match tokio::time::timeout(call.timeout, client.request_ad(request)).await {
            Err(_) => return AdOutcome::Timeout,
            Ok(Err(status))
                if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) =>
            {
                return AdOutcome::Timeout;
            }
            Ok(Err(status)) if status.code() == Code::Unavailable => {
                return AdOutcome::Error("unavailable (connection failed)".to_string());
            }
            Ok(Err(status)) => return AdOutcome::Error(format!("gRPC {:?}", status.code())),
            Ok(Ok(response)) => response.into_inner(),
        };
        read_answer(response, call)
    }
}

/// What a custom network's answer says: no ad, an ad that breaks the contract (the
/// network's fault), or its ad. Pure, like the OpenRTB one.
pub fn read_answer(response: AdResponse, call: &AdCall<'_>) -> AdOutcome {
    if !response.filled {
        return AdOutcome::NoFill;
    }
    if response.adm.is_empty() && response.nurl.is_empty() {
        return AdOutcome::Error("ad has neither adm nor nurl".to_string());
    }
    let price = match response.price_micros {
        0 => None,
        micros => match Micros::checked(micros) {
            Ok(price) => Some(price),
            Err(error) => return AdOutcome::Error(format!("price_micros: {error}")),
        },
    };
    AdOutcome::Filled(Box::new(Ad {
        bid_id: String::new(),
        price,
        // The contract prices in the currency Cascade asked in unless it says.
        cur: if response.cur.is_empty() {
            call.currency().to_string()
        } else {
            response.cur
        },
        adm: response.adm,
        nurl: response.nurl,
        adomain: response.adomain,
        crid: response.crid,
        cat: response.cat,
        attr: response.attr,
        dsa: response.dsa,
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use cascade_proto::customnetwork::v1::AdResponse;
    use cascade_proto::customnetwork::v1::custom_network_server::{
        CustomNetwork, CustomNetworkServer,
    };

    /// Answers by placement: `fill`, `none`, `slow`, `broken`.
    struct ScriptedNetwork;

    #[tonic::async_trait]
    impl CustomNetwork for ScriptedNetwork {
        async fn request_ad(
            &self,
            request: tonic::Request<AdRequest>,
        ) -> Result<tonic::Response<AdResponse>, tonic::Status> {
            let request = request.into_inner();
            let imps = request.request.map(|r| r.imp.len()).unwrap_or_default();
            assert_eq!(imps, 1, "one impression per call");
            match request.placement_id.as_str() {
                "fill" => Ok(tonic::Response::new(AdResponse {
                    filled: true,
                    price_micros: request.floor_micros + 100_000,
                    adm: "<custom/>".into(),
                    ..Default::default()
                })),
                "none" => Ok(tonic::Response::new(AdResponse::default())),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(tonic::Response::new(AdResponse::default()))
                }
                _ => Err(tonic::Status::internal("boom")),
            }
        }
    }

    async fn serve() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CustomNetworkServer::new(ScriptedNetwork))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    async fn call(adapter: &GrpcNetworkAdapter, endpoint: &str, placement: &str) -> AdOutcome {
        let request = serde_json::json!({"id": "r", "imp": [{"id": "1"}]});
        adapter
            .request_ad(&AdCall {
                endpoint,
                placement_id: placement,
                floor: Micros(1_000_000),
                currency: "",
                request: &request,
                impid: "1",
                timeout: Duration::from_millis(200),
                markup_from_nurl: false,
            })
            .await
    }

    #[tokio::test]
    async fn speaks_the_custom_network_contract() {
        let endpoint = serve().await;
        let adapter = GrpcNetworkAdapter::new(
            &crate::guard::OutboundSettings::allowing_loopback()
                .guard()
                .unwrap(),
        );
        let AdOutcome::Filled(ad) = call(&adapter, &endpoint, "fill").await else {
            panic!("expected a fill");
        };
        assert_eq!(
            (ad.price, ad.adm.as_str()),
            (Some(Micros(1_100_000)), "<custom/>")
        );
        assert_eq!(call(&adapter, &endpoint, "none").await, AdOutcome::NoFill);
        assert_eq!(call(&adapter, &endpoint, "slow").await, AdOutcome::Timeout);
        assert_eq!(
            call(&adapter, &endpoint, "broken").await,
            AdOutcome::Error("gRPC Internal".into())
        );

        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        assert!(matches!(
            call(&adapter, &closed, "fill").await,
            AdOutcome::Error(_)
        ));
    }
}
