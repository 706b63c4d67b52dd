//! Which addresses Cascade may send a request to on behalf of a network or a bid: the
//! public internet, and of the rest only the ranges an operator names. A network's
//! endpoint, a bid's `nurl` (fetched for markup) and every notice URL come from outside;
//! without this rule one configured endpoint or one answer could make Cascade read the
//! cloud's metadata service, a sidecar on loopback or anything on the pod network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is one
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address range in CIDR notation (e.g. 10.0.0.0/8, ::1/128)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let error = || CidrError(text.to_string());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| error())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| error())?,
            None => width,
        };
        if prefix > width {
            return Err(error());
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => prefix_match(
                u128::from(network.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                prefix_match(network.to_bits(), ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(network: u128, ip: u128, width: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = width - prefix;
    network >> shift == ip >> shift
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is on the public internet: not loopback, private (RFC 1918, unique
/// local), link-local (the cloud metadata address 169.254.169.254 among them), shared
/// (CGNAT), unspecified, broadcast, multicast, documentation, benchmarking or reserved;
/// NAT64 and 6to4 addresses are judged by the IPv4 address they embed.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach an IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from(
            (u32::from(segments[1]) << 16) | u32::from(segments[2]),
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || segments[..5] == [0; 5]) // IPv4-compatible and other reserved low addresses
}

/// The addresses a request may go to: public ones, and those in `allowed`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    pub allowed: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn new(allowed: Vec<Cidr>) -> AddressPolicy {
        AddressPolicy { allowed }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allows_privately(ip)
    }

    /// Whether `ip` is in a range the operator allowed (a private address the policy
    /// lets through).
    pub fn allows_privately(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|range| range.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip(internal)), "{internal}");
        }
        for public in [
            "8.8.8.8",
            "81.2.69.142",
            "2a00:1450:4001:81b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn ranges_parse_and_contain() {
        let loopback: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(loopback.contains(ip("127.9.9.9")) && !loopback.contains(ip("128.0.0.1")));
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("10.0.0.1")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "host/8", "", "::1/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(loopback.to_string(), "127.0.0.0/8");
    }

    #[test]
    fn the_policy_lets_through_public_addresses_and_named_ranges_only() {
        let strict = AddressPolicy::default();
        assert!(strict.permits(ip("8.8.8.8")));
        assert!(!strict.permits(ip("127.0.0.1")) && !strict.permits(ip("169.254.169.254")));
        let loopback = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(loopback.permits(ip("127.0.0.1")));
        assert!(!loopback.permits(ip("10.0.0.1")) && !loopback.permits(ip("169.254.169.254")));
    }

    proptest! {
        /// Every address of a private range is refused unless the range is allowed, in
        /// both spellings of an IPv4 address.
        #[test]
        fn private_ranges_are_refused_in_every_spelling(host in any::<u32>(), prefix in 0usize..5) {
            let (base, bits) = [
                (Ipv4Addr::new(10, 0, 0, 0), 8),
                (Ipv4Addr::new(172, 16, 0, 0), 12),
                (Ipv4Addr::new(192, 168, 0, 0), 16),
                (Ipv4Addr::new(127, 0, 0, 0), 8),
                (Ipv4Addr::new(169, 254, 0, 0), 16),
            ][prefix];
            let address = Ipv4Addr::from(base.to_bits() | (host >> bits));
            let strict = AddressPolicy::default();
            prop_assert!(!strict.permits(IpAddr::V4(address)));
            prop_assert!(!strict.permits(IpAddr::V6(address.to_ipv6_mapped())));
            let range: Cidr = format!("{base}/{bits}").parse().unwrap();
            prop_assert!(AddressPolicy::new(vec![range]).permits(IpAddr::V4(address)));
        }
    }
}
