//! Transport security: the four services over mutual TLS with certificates made at run
//! time, a gateway that must present a certificate too, and `cascade admin` refusing to
//! send its token where it could be read.

use std::path::Path;
use std::time::Duration;

use cascade_testkit::{ClusterSettings, FakeNetworks, ServiceProcess, TestCa, grpcurl};
use serde_json::{Value, json};

use crate::support::{DECIDE, banner_request, cascade_output, demo_configuration_file, eventually};

/// grpcurl's flags for a client of `ca` presenting its certificate.
fn mtls_flags(ca: &TestCa) -> Vec<String> {
    [
        ("-cacert", ca.ca_file()),
        ("-cert", ca.server_cert_file()),
        ("-key", ca.server_key_file()),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
    .collect()
}

async fn grpcurl_tls(
    flags: &[String],
    addr: std::net::SocketAddr,
    method: &str,
    data: &Value,
) -> grpcurl::Output {
    let mut args: Vec<String> = flags.to_vec();
    args.extend([
        // A refused handshake would otherwise be retried for grpcurl's 10 s.
        "-connect-timeout".to_string(),
        "1".to_string(),
        "-max-time".to_string(),
        "3".to_string(),
        "-d".to_string(),
        data.to_string(),
        addr.to_string(),
        method.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    grpcurl::run(&args).await.unwrap()
}

/// Settings as the TOML file a service process reads.
fn toml(settings: &impl serde::Serialize) -> String {
    toml::to_string(settings).unwrap()
}

fn serve_tls(grpc: &mut cascade_server::settings::GrpcSettings, ca: &TestCa) {
    // As in every cluster of the tests (see `ClusterBuilder::start`).
    grpc.admission.enabled = false;
    // Probes that cannot speak TLS ask the metrics endpoint.
    grpc.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    grpc.tls_cert_file = Some(ca.server_cert_file().to_path_buf());
    grpc.tls_key_file = Some(ca.server_key_file().to_path_buf());
    grpc.tls_client_ca_file = Some(ca.ca_file().to_path_buf());
}

#[tokio::test]
async fn a_decision_crosses_all_four_services_over_mutual_tls() {
    let ca = TestCa::new();
    let networks = FakeNetworks::start().await.unwrap();
    let configuration = demo_configuration_file(&networks, "");
    let mut settings = ClusterSettings::default();
    let state = cascade_state::StateSettings {
        configuration_file: Some(configuration.path().to_path_buf()),
        ..Default::default()
    };
    settings.targeting_evaluation.state = state.clone();
    settings.network_caller.state = state.clone();
    settings.bid_intake.state = state;
    serve_tls(&mut settings.targeting_evaluation.grpc, &ca);
    serve_tls(&mut settings.auction.grpc, &ca);
    serve_tls(&mut settings.network_caller.grpc, &ca);
    serve_tls(&mut settings.bid_intake.grpc, &ca);
    let targeting = ServiceProcess::spawn(
        "targeting-evaluation",
        &toml(&settings.targeting_evaluation),
    )
    .await
    .unwrap();
    let auction = ServiceProcess::spawn("auction", &toml(&settings.auction))
        .await
        .unwrap();
    let network_caller = ServiceProcess::spawn("network-caller", &toml(&settings.network_caller))
        .await
        .unwrap();
    let bid_intake = &mut settings.bid_intake;
    bid_intake.targeting_evaluation_addr = targeting.addr.into();
    bid_intake.auction_addr = auction.addr.into();
    bid_intake.network_caller_addr = network_caller.addr.into();
    bid_intake.resolver.tls_ca_file = Some(ca.ca_file().to_path_buf());
    bid_intake.resolver.tls_cert_file = Some(ca.server_cert_file().to_path_buf());
    bid_intake.resolver.tls_key_file = Some(ca.server_key_file().to_path_buf());
    bid_intake.admin_token = Some("tls-test-token".into());
    let bid_intake = ServiceProcess::spawn("bid-intake", &toml(&settings.bid_intake))
        .await
        .unwrap();

    let flags = mtls_flags(&ca);
    let health = "grpc.health.v1.Health/Check";
    eventually(
        Duration::from_secs(20),
        "bid-intake SERVING over TLS",
        || async {
            let output = grpcurl_tls(&flags, bid_intake.addr, health, &json!({})).await;
            output.success && output.json()["status"] == "SERVING"
        },
    )
    .await;
    // The kubelet's probes cannot speak gRPC over TLS: readiness over plain HTTP instead.
    for service in [&targeting, &auction, &network_caller, &bid_intake] {
        eventually(Duration::from_secs(10), "ready over HTTP", || async {
            let (status, body) = service.http_get("/ready").await.unwrap();
            status == 200 && body.trim() == "SERVING"
        })
        .await;
    }
    let decided = grpcurl_tls(&flags, bid_intake.addr, DECIDE, &banner_request(json!([]))).await;
    assert!(decided.success, "{}", decided.stderr);
    let decision = decided.json();
    // The network's ad: bid-intake reached targeting, the auction and network-caller.
    assert_eq!(
        decision["decisions"][0]["winner"]["networkId"], "coolads",
        "{decision}"
    );
    assert_eq!(networks.calls("coolads"), 1);

    // No plaintext, and no TLS client without a certificate of the CA.
    let plaintext = grpcurl::call(bid_intake.addr, health, &json!({}), &["-max-time", "2"])
        .await
        .unwrap();
    assert!(!plaintext.success);
    let anonymous = grpcurl_tls(&flags[..2], bid_intake.addr, health, &json!({})).await;
    assert!(
        !anonymous.success,
        "a client without a certificate was let in"
    );
    let other_ca = TestCa::new();
    let stranger = grpcurl_tls(&mtls_flags(&other_ca), bid_intake.addr, health, &json!({})).await;
    assert!(
        !stranger.success,
        "a certificate of another CA was accepted"
    );

    // `cascade admin` over TLS with its client certificate.
    let target = format!("https://{}", bid_intake.addr);
    let path = |p: &Path| p.display().to_string();
    let (ca_file, cert_file, key_file) = (
        path(ca.ca_file()),
        path(ca.server_cert_file()),
        path(ca.server_key_file()),
    );
    let listed = cascade_output(
        &[
            "admin",
            "--target",
            &target,
            "--ca-file",
            &ca_file,
            "--cert-file",
            &cert_file,
            "--key-file",
            &key_file,
            "get",
            "networks",
        ],
        &[("CASCADE_ADMIN_TOKEN", "tls-test-token")],
    )
    .await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("coolads"));
}

#[tokio::test]
async fn cascade_admin_never_sends_its_token_in_plaintext_off_this_machine() {
    // Nothing listens there: the refusal comes before any connection.
    let refused = cascade_output(
        &[
            "admin",
            "--target",
            "http://192.0.2.1:50051",
            "get",
            "networks",
        ],
        &[("CASCADE_ADMIN_TOKEN", "secret")],
    )
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to send the admin token in plaintext"),
        "{stderr}"
    );
}
