//! Targets as operators' gRPC tools take them: `host:port` (as grpcurl and ghz do), or a
//! URL whose scheme says whether to speak TLS.

/// `target` as a URL: kept when it has a scheme, else `https://` when `tls`, `http://`
/// otherwise.
pub fn url(target: &str, tls: bool) -> String {
    if target.contains("://") {
        target.to_string()
    } else if tls {
        format!("https://{target}")
    } else {
        format!("http://{target}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_get_a_scheme_and_urls_are_kept() {
        assert_eq!(url("127.0.0.1:50051", false), "http://127.0.0.1:50051");
        assert_eq!(url("bid-intake:50051", true), "https://bid-intake:50051");
        assert_eq!(url("[::1]:50051", false), "http://[::1]:50051");
        assert_eq!(url("https://x:1", false), "https://x:1");
        assert_eq!(url("http://x:1", true), "http://x:1");
    }
}
