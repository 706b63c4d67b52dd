//! The outbound guard: every request Cascade sends on behalf of a network or a bid (a
//! network call, a `nurl` fetched for markup, a win, loss or billing notice) goes only to
//! addresses [`cascade_core::address::AddressPolicy`] permits, by a scheme the settings
//! allow, with no more redirects than they allow.
//!
//! Addresses are checked where the connection is made, not where the URL is read: host
//! names resolve through [`GuardedResolver`], which drops every address the policy does
//! not permit, so a name that resolves (or is re-bound) to an internal address reaches
//! nothing. An address written in the URL never reaches a resolver, so
//! [`OutboundGuard::check_url`] judges it before the request is made.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use cascade_core::address::{AddressPolicy, Cidr};
use cascade_core::settings::{InvalidSetting, Validate};
use serde::{Deserialize, Serialize};

/// Longest URL sent to: a network endpoint, a bid's `nurl`, `burl` or `lurl`.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// Most redirects a setting may allow.
pub const MAX_REDIRECTS: u8 = 5;

/// Where outbound requests may go (the `outbound` settings of network-caller and
/// bid-intake).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundSettings {
    /// Private ranges (CIDR) requests may go to besides the public internet, e.g.
    /// `["10.20.0.0/16"]` for a network inside the pod network. Empty: public
    /// addresses only. `cascade up` and the tests allow loopback.
    pub allow_private: Vec<String>,
    /// Redirects followed (at most [`MAX_REDIRECTS`]), each to the same scheme and
    /// checked as the first URL was. 0: none (a redirect answer is an error).
    pub max_redirects: u8,
    /// Plain `http://` only to an address in `allow_private`; anything else must be
    /// `https://` (on in the prod overlay).
    pub require_https: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("not a URL")]
    NotUrl,
    #[error("URL of {0} bytes, over the {MAX_URL_BYTES}-byte limit")]
    TooLong(usize),
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("plain http to {0}, which is not in outbound.allow_private (https is required)")]
    HttpsRequired(String),
    #[error("address {0} is not public and not in outbound.allow_private")]
    Address(IpAddr),
    #[error("{0} resolves to no address outbound requests may go to")]
    NoPermittedAddress(String),
}

/// The guard built from [`OutboundSettings`], shared by every client that sends out.
#[derive(Clone, Debug)]
pub struct OutboundGuard {
    policy: Arc<AddressPolicy>,
    max_redirects: u8,
    require_https: bool,
}

impl Default for OutboundGuard {
    /// Public addresses only, no redirects.
    fn default() -> Self {
        OutboundGuard {
            policy: Arc::default(),
            max_redirects: 0,
            require_https: false,
        }
    }
}

impl OutboundSettings {
    /// Loopback allowed: what `cascade up` and the tests run with.
    pub fn allowing_loopback() -> OutboundSettings {
        OutboundSettings {
            allow_private: vec!["127.0.0.0/8".into(), "::1/128".into()],
            ..Default::default()
        }
    }

    /// The guard, or which setting is wrong and why.
    pub fn guard(&self) -> Result<OutboundGuard, InvalidSetting> {
        let allowed = self
            .allow_private
            .iter()
            .enumerate()
            .map(|(i, range)| {
                range.parse::<Cidr>().map_err(|error| {
                    InvalidSetting::new(format!("allow_private[{i}]"), error.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_redirects > MAX_REDIRECTS {
            return Err(InvalidSetting::new(
                "max_redirects",
                format!("at most {MAX_REDIRECTS}, got {}", self.max_redirects),
            ));
        }
        Ok(OutboundGuard {
            policy: Arc::new(AddressPolicy::new(allowed)),
            max_redirects: self.max_redirects,
            require_https: self.require_https,
        })
    }
}

impl Validate for OutboundSettings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        self.guard().map(|_| ())
    }
}

impl OutboundGuard {
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// Judges a URL before it is requested: its length, its scheme, and an address
    /// written in it (a host name is judged when it resolves).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, GuardError> {
        if url.len() > MAX_URL_BYTES {
            return Err(GuardError::TooLong(url.len()));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| GuardError::NotUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GuardError::Scheme(parsed.scheme().to_string()));
        }
        let host = parsed.host_str().ok_or(GuardError::NotUrl)?;
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        match parsed.scheme() {
            "http"
                if self.require_https
                    && !literal.is_some_and(|ip| self.policy.allows_privately(ip)) =>
            {
                return Err(GuardError::HttpsRequired(host.to_string()));
            }
            _ => {}
        }
        if let Some(ip) = literal
            && !self.policy.permits(ip)
        {
            return Err(GuardError::Address(ip));
        }
        Ok(parsed)
    }

    /// The addresses of `host` the policy permits (an error when none is).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return if self.policy.permits(ip) {
                Ok(vec![SocketAddr::new(ip, port)])
            } else {
                Err(GuardError::Address(ip))
            };
        }
        let resolved = tokio::net::lookup_host((unbracketed, port))
            .await
            .map_err(|_| GuardError::NoPermittedAddress(host.to_string()))?;
        let permitted: Vec<SocketAddr> = resolved
            .filter(|addr| self.policy.permits(addr.ip()))
            .collect();
        if permitted.is_empty() {
            return Err(GuardError::NoPermittedAddress(host.to_string()));
        }
        Ok(permitted)
    }

    /// An HTTP client builder that resolves through the guard and follows redirects
    /// only as the settings allow.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver(self.clone())))
            .redirect(self.redirect_policy())
    }

    fn redirect_policy(&self) -> reqwest::redirect::Policy {
        if self.max_redirects == 0 {
            return reqwest::redirect::Policy::none();
        }
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > usize::from(guard.max_redirects) {
                return attempt.error(format!("more than {} redirects", guard.max_redirects));
            }
            let same_scheme = attempt
                .previous()
                .last()
                .is_none_or(|previous| previous.scheme() == attempt.url().scheme());
            if !same_scheme {
                return attempt.error("a redirect to another scheme");
            }
            match guard.check_url(attempt.url().as_str()) {
                Ok(_) => attempt.follow(),
                Err(error) => attempt.error(error),
            }
        })
    }
}

/// The guard's refusal behind a failed request (at name resolution, or of a redirect),
/// if that is why it failed.
pub fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a GuardError> {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<GuardError>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

/// Name resolution that keeps only the addresses the policy permits.
#[derive(Debug)]
pub struct GuardedResolver(OutboundGuard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str(), 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> OutboundGuard {
        OutboundSettings::default().guard().unwrap()
    }

    #[test]
    fn urls_to_internal_addresses_are_refused() {
        let guard = strict();
        for url in [
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest/meta-data/",
            "https://10.0.0.5/openrtb",
            "http://[::1]/",
            "http://[::ffff:192.168.0.1]/",
        ] {
            assert!(
                matches!(guard.check_url(url), Err(GuardError::Address(_))),
                "{url}"
            );
        }
        assert!(guard.check_url("https://ads.example.com/bid").is_ok());
        assert!(matches!(
            guard.check_url("file:///etc/passwd"),
            Err(GuardError::Scheme(_))
        ));
        assert!(matches!(
            guard.check_url("gopher://x/"),
            Err(GuardError::Scheme(_))
        ));
        let long = format!("https://a.com/{}", "x".repeat(MAX_URL_BYTES));
        assert!(matches!(
            guard.check_url(&long),
            Err(GuardError::TooLong(_))
        ));
        assert_eq!(guard.check_url("not a url"), Err(GuardError::NotUrl));
    }

    #[test]
    fn allowed_ranges_and_https() {
        let guard = OutboundSettings {
            require_https: true,
            ..OutboundSettings::allowing_loopback()
        }
        .guard()
        .unwrap();
        assert!(guard.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(matches!(
            guard.check_url("http://ads.example.com/bid"),
            Err(GuardError::HttpsRequired(_))
        ));
        assert!(guard.check_url("https://ads.example.com/bid").is_ok());
        let bad = OutboundSettings {
            allow_private: vec!["10.0.0.0/99".into()],
            ..Default::default()
        };
        assert_eq!(bad.guard().unwrap_err().key, "allow_private[0]");
        let redirects = OutboundSettings {
            max_redirects: MAX_REDIRECTS + 1,
            ..Default::default()
        };
        assert_eq!(redirects.guard().unwrap_err().key, "max_redirects");
    }

    /// A server on 127.0.0.1: `/target` answers 200, `/to-target` redirects to it, and
    /// `/elsewhere` redirects to another loopback address (which nothing listens on, so
    /// nothing could be reached even if the guard let it through).
    async fn redirecting_server() -> std::net::SocketAddr {
        use axum::response::Redirect;
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/target", get(|| async { "ok" }))
            .route(
                "/to-target",
                get(move || async move { Redirect::temporary(&format!("http://{addr}/target")) }),
            )
            .route(
                "/elsewhere",
                get(move || async move {
                    Redirect::temporary(&format!("http://127.0.0.2:{}/target", addr.port()))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn allowing(ranges: &[&str], max_redirects: u8) -> reqwest::Client {
        OutboundSettings {
            allow_private: ranges.iter().map(|r| r.to_string()).collect(),
            max_redirects,
            ..Default::default()
        }
        .guard()
        .unwrap()
        .client_builder()
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn redirects_are_not_followed_unless_allowed_and_then_rechecked() {
        let addr = redirecting_server().await;
        let get = |client: reqwest::Client, path: &'static str| async move {
            client.get(format!("http://{addr}{path}")).send().await
        };
        let none = get(allowing(&["127.0.0.1/32"], 0), "/to-target")
            .await
            .unwrap();
        assert_eq!(none.status(), 307, "not followed by default");
        let one = get(allowing(&["127.0.0.1/32"], 1), "/to-target")
            .await
            .unwrap();
        assert_eq!(one.status(), 200, "followed within the allowed count");
        let refused = get(allowing(&["127.0.0.1/32"], 1), "/elsewhere")
            .await
            .unwrap_err();
        assert!(refused.is_redirect(), "{refused:?}");
        assert_eq!(
            refusal(&refused),
            Some(&GuardError::Address("127.0.0.2".parse().unwrap())),
            "the redirect's target is judged as the first URL was"
        );
    }

    #[tokio::test]
    async fn the_client_resolves_names_through_the_guard() {
        let addr = redirecting_server().await;
        // "localhost" resolves to 127.0.0.1 (and ::1), none of which is allowed here.
        let client = allowing(&["127.0.0.2/32"], 0);
        let refused = client
            .get(format!("http://localhost:{}/target", addr.port()))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&refused),
            Some(&GuardError::NoPermittedAddress("localhost".into()))
        );
        assert_eq!(
            crate::openrtb_http::describe(&refused),
            "refused: localhost resolves to no address outbound requests may go to",
            "an attempt's detail says why"
        );
        let allowed = allowing(&["127.0.0.0/8", "::1/128"], 0);
        let answer = allowed
            .get(format!("http://localhost:{}/target", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }

    #[tokio::test]
    async fn names_resolve_to_permitted_addresses_only() {
        // "localhost" resolves to loopback, which a strict guard refuses and a guard
        // allowing loopback lets through.
        assert!(matches!(
            strict().resolve("localhost", 80).await,
            Err(GuardError::NoPermittedAddress(_))
        ));
        let loopback = OutboundSettings::allowing_loopback().guard().unwrap();
        let addrs = loopback.resolve("localhost", 80).await.unwrap();
        assert!(addrs.iter().all(|addr| addr.ip().is_loopback()));
        assert!(matches!(
            strict().resolve("[::1]", 80).await,
            Err(GuardError::Address(_))
        ));
    }
}
