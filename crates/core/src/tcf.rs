//! A bounded reader of IAB TCF v2 TC strings (policy versions up to v2.2), as the
//! "Consent string and vendor list formats v2" specification lays them out, publisher
//! restrictions included.
//!
//! Why our own: the string comes from the user's browser, so its cost must be bounded by
//! its length. Vendor sets are kept as the ranges the string states (never expanded
//! into one entry per vendor), every id is checked against `MaxVendorId`, and a string
//! longer than [`MAX_TC_STRING_BYTES`] is refused before a bit is read. Work and memory
//! are linear in the length of the string.
//!
//! Only the core segment is read for decisions; the optional segments after it
//! (disclosed vendors, publisher TC) are checked to be base64url and otherwise skipped.

use std::fmt;

/// The longest TC string read. Real strings are a few hundred bytes (a bit field of the
/// ~1,400 vendor ids the Global Vendor List holds is 234 characters) to a few KB with the
/// disclosed-vendors segment and publisher restrictions; anything longer is refused as
/// undecodable.
pub const MAX_TC_STRING_BYTES: usize = 8 * 1024;

/// Why a TC string could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TcfError {
    #[error("empty")]
    Empty,
    #[error("{0} bytes, over the {MAX_TC_STRING_BYTES}-byte limit")]
    TooLong(usize),
    #[error("not base64url at byte {0}")]
    NotBase64(usize),
    #[error("version {0}, not 2")]
    Version(u64),
    #[error("ends inside {0}")]
    Truncated(&'static str),
    #[error("{section}: vendor id {id} outside 1..={max}")]
    VendorOutOfRange {
        section: &'static str,
        id: u64,
        max: u64,
    },
    #[error("{section}: range {start}-{end} runs backwards")]
    BackwardsRange {
        section: &'static str,
        start: u64,
        end: u64,
    },
}

/// A set of vendor ids, as the sorted, disjoint, inclusive ranges that hold them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VendorSet {
    ranges: Vec<(u16, u16)>,
}

impl VendorSet {
    pub fn contains(&self, vendor: u16) -> bool {
        let at = self.ranges.partition_point(|&(_, end)| end < vendor);
        self.ranges
            .get(at)
            .is_some_and(|&(start, _)| start <= vendor)
    }

    /// The ids, in order (for tests and the log; a set of all 65,535 ids yields them all).
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|&(start, end)| start..=end)
    }

    /// How many ranges hold the set.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    fn from_ranges(mut ranges: Vec<(u16, u16)>) -> VendorSet {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(start) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(end);
                }
                _ => merged.push((start, end)),
            }
        }
        VendorSet { ranges: merged }
    }
}

/// What a publisher restriction requires of the vendors it names, for one purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestrictionKind {
    /// The purpose is not allowed on any legal basis.
    NotAllowed,
    /// Only consent counts (legitimate interest does not).
    RequireConsent,
    /// Only legitimate interest counts (consent does not).
    RequireLegitimateInterest,
    /// Type 3, which the specification leaves undefined: read as not allowed, so that a
    /// restriction we cannot interpret never widens what a vendor may do.
    Undefined,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restriction {
    pub purpose: u8,
    pub kind: RestrictionKind,
    pub vendors: VendorSet,
}

/// The core segment of a TC string: what the decisions read of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcString {
    pub cmp_id: u16,
    pub vendor_list_version: u16,
    pub policy_version: u8,
    pub service_specific: bool,
    /// Bit `i - 1` set: special feature `i` opted in (12 of them).
    special_feature_optins: u16,
    /// Bit `i - 1` set: purpose `i` consented (24 of them).
    purpose_consents: u32,
    purpose_legitimate_interests: u32,
    pub vendor_consents: VendorSet,
    pub vendor_legitimate_interests: VendorSet,
    pub restrictions: Vec<Restriction>,
}

/// How a vendor may process data for a purpose under a TC string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    Consent,
    LegitimateInterest,
}

impl TcString {
    pub fn special_feature(&self, feature: u8) -> bool {
        bit(u32::from(self.special_feature_optins), feature, 12)
    }

    pub fn purpose_consent(&self, purpose: u8) -> bool {
        bit(self.purpose_consents, purpose, 24)
    }

    pub fn purpose_legitimate_interest(&self, purpose: u8) -> bool {
        bit(self.purpose_legitimate_interests, purpose, 24)
    }

    /// The purposes consented to, in order.
    pub fn purposes_consented(&self) -> impl Iterator<Item = u8> + '_ {
        (1..=24).filter(|&p| self.purpose_consent(p))
    }

    /// The purposes with legitimate interest established, in order.
    pub fn purposes_legitimate_interest(&self) -> impl Iterator<Item = u8> + '_ {
        (1..=24).filter(|&p| self.purpose_legitimate_interest(p))
    }

    /// The legal basis on which `vendor` may process data for `purpose`, if any, with the
    /// publisher's restrictions applied: a restriction "not allowed" (or one of the
    /// undefined type, or two that contradict each other) leaves none; "require consent"
    /// or "require legitimate interest" leaves only that basis. `legitimate_interest`
    /// says whether the purpose may rest on legitimate interest at all (TCF v2.2 allows
    /// it for purposes 2 and 7 to 11, never for 1 and 3 to 6).
    pub fn basis(&self, vendor: u16, purpose: u8, legitimate_interest: bool) -> Option<Basis> {
        let consent = self.purpose_consent(purpose) && self.vendor_consents.contains(vendor);
        let interest = self.purpose_legitimate_interest(purpose)
            && self.vendor_legitimate_interests.contains(vendor);
        let mut only_consent = false;
        let mut only_interest = false;
        for restriction in self
            .restrictions
            .iter()
            .filter(|r| r.purpose == purpose && r.vendors.contains(vendor))
        {
            match restriction.kind {
                RestrictionKind::NotAllowed | RestrictionKind::Undefined => return None,
                RestrictionKind::RequireConsent => only_consent = true,
                RestrictionKind::RequireLegitimateInterest => only_interest = true,
            }
        }
        match (only_consent, only_interest) {
            (true, true) => None,
            (true, false) => consent.then_some(Basis::Consent),
            (false, true) => interest.then_some(Basis::LegitimateInterest),
            (false, false) if consent => Some(Basis::Consent),
            (false, false) => {
                (legitimate_interest && interest).then_some(Basis::LegitimateInterest)
            }
        }
    }

    /// Reads a TC string: its core segment, and checks that the segments after it are
    /// base64url.
    pub fn decode(text: &str) -> Result<TcString, TcfError> {
        if text.is_empty() {
            return Err(TcfError::Empty);
        }
        if text.len() > MAX_TC_STRING_BYTES {
            return Err(TcfError::TooLong(text.len()));
        }
        let mut segments = text.split('.');
        let core = segments.next().unwrap_or_default();
        let mut offset = core.len() + 1;
        for segment in segments {
            Bits::new(segment, offset)?;
            offset += segment.len() + 1;
        }
        read_core(&mut Bits::new(core, 0)?)
    }
}

fn bit(bits: u32, index: u8, width: u8) -> bool {
    (1..=width).contains(&index) && bits >> (index - 1) & 1 == 1
}

fn read_core(bits: &mut Bits<'_>) -> Result<TcString, TcfError> {
    let version = bits.read(6, "Version")?;
    if version != 2 {
        return Err(TcfError::Version(version));
    }
    bits.skip(36 + 36, "Created")?;
    let cmp_id = bits.read(12, "CmpId")? as u16;
    bits.skip(12 + 6 + 12, "CmpVersion")?;
    let vendor_list_version = bits.read(12, "VendorListVersion")? as u16;
    let policy_version = bits.read(6, "TcfPolicyVersion")? as u8;
    let service_specific = bits.read(1, "IsServiceSpecific")? == 1;
    bits.skip(1, "UseNonStandardTexts")?;
    let special_feature_optins = bits.read_flags(12, "SpecialFeatureOptIns")? as u16;
    let purpose_consents = bits.read_flags(24, "PurposesConsent")?;
    let purpose_legitimate_interests = bits.read_flags(24, "PurposesLITransparency")?;
    bits.skip(1 + 12, "PublisherCC")?;
    let vendor_consents = read_vendor_section(bits, "vendor consents")?;
    let vendor_legitimate_interests = read_vendor_section(bits, "vendor legitimate interests")?;
    let restrictions = read_restrictions(bits)?;
    Ok(TcString {
        cmp_id,
        vendor_list_version,
        policy_version,
        service_specific,
        special_feature_optins,
        purpose_consents,
        purpose_legitimate_interests,
        vendor_consents,
        vendor_legitimate_interests,
        restrictions,
    })
}

/// `MaxVendorId`, then a bit field of that many bits or `NumEntries` range entries.
fn read_vendor_section(bits: &mut Bits<'_>, section: &'static str) -> Result<VendorSet, TcfError> {
    let max_vendor = bits.read(16, section)?;
    if bits.read(1, section)? == 0 {
        // A bit field: one bit per vendor id, 1..=MaxVendorId.
        let mut ranges = Vec::new();
        let mut open: Option<u16> = None;
        for id in 1..=max_vendor as u16 {
            match (bits.read(1, section)? == 1, open) {
                (true, None) => open = Some(id),
                (false, Some(start)) => {
                    ranges.push((start, id - 1));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(start) = open {
            ranges.push((start, max_vendor as u16));
        }
        return Ok(VendorSet { ranges });
    }
    read_ranges(bits, section, max_vendor)
}

/// `NumEntries` (12 bits), then that many entries of `IsARange`, a start id and, for a
/// range, an end id (16 bits each), every id within 1..=`max_vendor`.
fn read_ranges(
    bits: &mut Bits<'_>,
    section: &'static str,
    max_vendor: u64,
) -> Result<VendorSet, TcfError> {
    let entries = bits.read(12, section)?;
    // Each entry takes at least 17 bits: a count the string cannot hold is refused
    // before anything is allocated for it.
    if entries * 17 > bits.remaining() {
        return Err(TcfError::Truncated(section));
    }
    let mut ranges = Vec::with_capacity(entries as usize);
    for _ in 0..entries {
        let is_range = bits.read(1, section)? == 1;
        let start = bits.read(16, section)?;
        let end = if is_range {
            bits.read(16, section)?
        } else {
            start
        };
        for id in [start, end] {
            if id == 0 || id > max_vendor {
                return Err(TcfError::VendorOutOfRange {
                    section,
                    id,
                    max: max_vendor,
                });
            }
        }
        if end < start {
            return Err(TcfError::BackwardsRange {
                section,
                start,
                end,
            });
        }
        ranges.push((start as u16, end as u16));
    }
    Ok(VendorSet::from_ranges(ranges))
}

fn read_restrictions(bits: &mut Bits<'_>) -> Result<Vec<Restriction>, TcfError> {
    const SECTION: &str = "publisher restrictions";
    let count = bits.read(12, SECTION)?;
    // Each restriction takes at least 20 bits (purpose, type, an empty entry count).
    if count * 20 > bits.remaining() {
        return Err(TcfError::Truncated(SECTION));
    }
    let mut restrictions = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let purpose = bits.read(6, SECTION)? as u8;
        let kind = match bits.read(2, SECTION)? {
            0 => RestrictionKind::NotAllowed,
            1 => RestrictionKind::RequireConsent,
            2 => RestrictionKind::RequireLegitimateInterest,
            _ => RestrictionKind::Undefined,
        };
        let vendors = read_ranges(bits, SECTION, u64::from(u16::MAX))?;
        restrictions.push(Restriction {
            purpose,
            kind,
            vendors,
        });
    }
    Ok(restrictions)
}

/// The bits of one base64url segment, most significant first, read without decoding
/// the segment into bytes. Trailing `=` padding is tolerated.
pub(crate) struct Bits<'a> {
    text: &'a [u8],
    position: usize,
}

impl<'a> Bits<'a> {
    pub(crate) fn new(segment: &'a str, offset: usize) -> Result<Bits<'a>, TcfError> {
        let text = segment.trim_end_matches('=').as_bytes();
        if let Some(at) = text.iter().position(|&c| sextet(c).is_none()) {
            return Err(TcfError::NotBase64(offset + at));
        }
        Ok(Bits { text, position: 0 })
    }

    pub(crate) fn remaining(&self) -> u64 {
        (self.text.len() * 6 - self.position) as u64
    }

    /// The next `width` (at most 36) bits as an unsigned number.
    pub(crate) fn read(&mut self, width: usize, field: &'static str) -> Result<u64, TcfError> {
        if self.remaining() < width as u64 {
            return Err(TcfError::Truncated(field));
        }
        let mut value = 0u64;
        for _ in 0..width {
            let sextet = sextet(self.text[self.position / 6]).unwrap_or(0);
            let bit = sextet >> (5 - self.position % 6) & 1;
            value = value << 1 | u64::from(bit);
            self.position += 1;
        }
        Ok(value)
    }

    fn skip(&mut self, width: usize, field: &'static str) -> Result<(), TcfError> {
        if self.remaining() < width as u64 {
            return Err(TcfError::Truncated(field));
        }
        self.position += width;
        Ok(())
    }

    /// `width` flags, the first read into bit 0.
    fn read_flags(&mut self, width: usize, field: &'static str) -> Result<u32, TcfError> {
        let bits = self.read(width, field)?;
        Ok((0..width).fold(0u32, |flags, i| {
            flags | (((bits >> (width - 1 - i)) & 1) as u32) << i
        }))
    }
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

impl fmt::Display for RestrictionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestrictionKind::NotAllowed => "not allowed",
            RestrictionKind::RequireConsent => "consent required",
            RestrictionKind::RequireLegitimateInterest => "legitimate interest required",
            RestrictionKind::Undefined => "undefined restriction",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(set: &VendorSet) -> Vec<u16> {
        set.iter().collect()
    }

    fn purposes(tc: &TcString) -> (Vec<u8>, Vec<u8>) {
        (
            tc.purposes_consented().collect(),
            tc.purposes_legitimate_interest().collect(),
        )
    }

    /// Base64url of a string of '0' and '1' (as the IAB's Java decoder tests build
    /// strings bit by bit).
    fn from_bits(bits: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bits: Vec<u8> = bits.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        bits.chunks(6)
            .map(|chunk| {
                let index = (0..6).fold(0usize, |acc, i| {
                    acc << 1 | usize::from(chunk.get(i) == Some(&b'1'))
                });
                ALPHABET[index] as char
            })
            .collect()
    }

    // The vectors below are the IAB's own: the test suite of its reference Java
    // decoder (iabtcf-java, TCStringV2Test) and strings whose decoding Prebid Server
    // and the GDPR::IAB::TCFv2 decoder publish.

    #[test]
    fn reads_the_core_fields_of_the_reference_string() {
        let tc = TcString::decode("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA").unwrap();
        assert_eq!((tc.cmp_id, tc.vendor_list_version), (675, 15));
        assert_eq!(tc.policy_version, 2);
        assert!(!tc.service_specific);
        assert!(tc.special_feature(1) && !tc.special_feature(2));
        assert_eq!(purposes(&tc), (vec![2, 10], vec![2, 9]));
    }

    #[test]
    fn reads_bit_field_vendor_sections() {
        let tc = TcString::decode(
            "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA",
        )
        .unwrap();
        assert_eq!(purposes(&tc).0, [3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(ids(&tc.vendor_consents), [23, 37, 47, 48, 53, 65, 98]);
        assert_eq!(
            ids(&tc.vendor_legitimate_interests),
            [37, 47, 48, 53, 65, 98, 129]
        );
    }

    #[test]
    fn skips_the_optional_segments_padding_included() {
        let tc = TcString::decode(
            "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA.IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA.cAAAAAAAITg=",
        )
        .unwrap();
        assert_eq!(ids(&tc.vendor_consents), [23, 37, 47, 48, 53, 65, 98]);
    }

    #[test]
    fn reads_range_encoded_vendor_sections() {
        let tc =
            TcString::decode("COv__-wOv__-wC2AAAENAPCgAAAAAAAAAAAAA_wAQA_gEBABAEAAAA").unwrap();
        assert_eq!(ids(&tc.vendor_legitimate_interests), [128]);
        let two = TcString::decode(
            "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw",
        )
        .unwrap();
        assert_eq!(ids(&two.vendor_consents), [702, 703]);
        let one = TcString::decode(
            "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw",
        )
        .unwrap();
        assert_eq!(ids(&one.vendor_consents), [703]);
        let both = TcString::decode("COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA").unwrap();
        assert!(both.purpose_consent(1) && both.purpose_consent(2));
    }

    #[test]
    fn reads_publisher_restrictions_in_the_v2_layout() {
        // The Java decoder's bit-by-bit string: three restrictions, no vendors each.
        let bits = "0000100011101011100 1000000000000001010 0000001110101110010
                    0000000000000101000 0000110011111000000 0000000000000000100
                    0011010000000011110 0001000000000000000 0000000000000000000
                    0000000000000000000 0000000000000000000 0000000000000000000
                    0000000000000000000 000000000011
                    000001 01 000000000000  000010 00 000000000000
                    000011 10 000000000000  0";
        let tc = TcString::decode(&from_bits(bits)).unwrap();
        let read: Vec<(u8, RestrictionKind, usize)> = tc
            .restrictions
            .iter()
            .map(|r| (r.purpose, r.kind, r.vendors.range_count()))
            .collect();
        assert_eq!(
            read,
            [
                (1, RestrictionKind::RequireConsent, 0),
                (2, RestrictionKind::NotAllowed, 0),
                (3, RestrictionKind::RequireLegitimateInterest, 0),
            ]
        );

        // The string Prebid Server's and the GDPR::IAB::TCFv2 decoder's tests read: vendors
        // 1-10 with consent and legitimate interest, purposes 6 and 23 consented, every
        // purpose under legitimate interest, and purpose 7 restricted to consent for
        // vendor 32.
        let tc =
            TcString::decode("COwAdDhOwAdDhN4ABAENAPCgAAQAAv___wAAAFP_AAp_4AI6ACACAA").unwrap();
        assert_eq!(tc.cmp_id, 888);
        assert_eq!(purposes(&tc), (vec![6, 23], (1..=24).collect()));
        assert_eq!(ids(&tc.vendor_consents), (1..=10).collect::<Vec<_>>());
        assert_eq!(tc.restrictions.len(), 1);
        assert_eq!(
            (tc.restrictions[0].purpose, tc.restrictions[0].kind),
            (7, RestrictionKind::RequireConsent)
        );
        assert_eq!(ids(&tc.restrictions[0].vendors), [32]);
        assert_eq!(tc.basis(32, 7, true), None, "consent required, none given");
        assert_eq!(tc.basis(1, 7, true), Some(Basis::LegitimateInterest));
        assert_eq!(tc.basis(5, 6, false), Some(Basis::Consent));
        assert_eq!(
            tc.basis(5, 4, false),
            None,
            "no consent, and LI not allowed"
        );
        assert_eq!(tc.basis(11, 2, true), None, "not a vendor of the string");
    }

    #[test]
    fn refuses_what_the_format_does_not_allow() {
        let long = "C".repeat(MAX_TC_STRING_BYTES + 1);
        assert_eq!(
            TcString::decode(&long),
            Err(TcfError::TooLong(MAX_TC_STRING_BYTES + 1))
        );
        assert_eq!(TcString::decode(""), Err(TcfError::Empty));
        assert!(matches!(
            TcString::decode("CO!x"),
            Err(TcfError::NotBase64(2))
        ));
        assert!(matches!(
            TcString::decode("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA"),
            Err(TcfError::Version(1))
        ));
        assert!(matches!(
            TcString::decode("COtybn4PA_zT4KjACBENAPCIAEBAAEC"),
            Err(TcfError::Truncated(_))
        ));
    }

    /// A core segment with the given vendor consent section bits, nothing else set.
    fn with_vendor_section(section: &str) -> String {
        let mut bits = String::from("000010");
        bits.push_str(&"0".repeat(36 + 36 + 12 + 12 + 6 + 12 + 12));
        bits.push_str("000100"); // policy version 4
        bits.push_str(&"0".repeat(1 + 1 + 12 + 24 + 24 + 1 + 12));
        bits.push_str(section);
        bits.push_str(&"0".repeat(16 + 1 + 12)); // empty legitimate interests
        bits.push_str(&"0".repeat(12)); // no restrictions
        from_bits(&bits)
    }

    fn range_section(max: u16, entries: &[(u16, u16)]) -> String {
        let mut bits = format!("{max:016b}1{:012b}", entries.len());
        for &(start, end) in entries {
            if start == end {
                bits.push_str(&format!("0{start:016b}"));
            } else {
                bits.push_str(&format!("1{start:016b}{end:016b}"));
            }
        }
        bits
    }

    #[test]
    fn vendor_ids_stay_within_max_vendor_id() {
        let outside = with_vendor_section(&range_section(100, &[(5, 101)]));
        assert!(matches!(
            TcString::decode(&outside),
            Err(TcfError::VendorOutOfRange { id: 101, .. })
        ));
        let backwards = with_vendor_section(&range_section(100, &[(50, 40)]));
        assert!(matches!(
            TcString::decode(&backwards),
            Err(TcfError::BackwardsRange { .. })
        ));
        let zero = with_vendor_section(&range_section(100, &[(0, 0)]));
        assert!(TcString::decode(&zero).is_err());
    }

    #[test]
    fn the_longest_range_string_is_cheap_to_read() {
        // As many full-width overlapping ranges as the size limit allows: kept as one
        // range, not 65,535 ids per entry.
        let entries = vec![(1u16, u16::MAX); 1_450];
        let text = with_vendor_section(&range_section(u16::MAX, &entries));
        assert!(text.len() < MAX_TC_STRING_BYTES, "{}", text.len());
        let tc = TcString::decode(&text).unwrap();
        assert_eq!(tc.vendor_consents.range_count(), 1);
        assert!(tc.vendor_consents.contains(65_535) && tc.vendor_consents.contains(1));
        // The hostile string of 4,095 such entries (22 KB) is refused unread.
        let hostile = with_vendor_section(&range_section(u16::MAX, &vec![(1, u16::MAX); 4_095]));
        assert_eq!(
            TcString::decode(&hostile),
            Err(TcfError::TooLong(hostile.len()))
        );
    }

    proptest! {
        /// Whatever ranges a string states, the set holds exactly their ids.
        #[test]
        fn range_sections_hold_exactly_the_ids_they_state(
            entries in proptest::collection::vec((1u16..400, 0u16..40), 0..40),
            probe in proptest::collection::vec(0u16..500, 50),
        ) {
            let entries: Vec<(u16, u16)> = entries.iter().map(|&(s, n)| (s, s + n)).collect();
            let tc = TcString::decode(&with_vendor_section(&range_section(500, &entries))).unwrap();
            for id in probe {
                let stated = entries.iter().any(|&(s, e)| (s..=e).contains(&id));
                prop_assert_eq!(tc.vendor_consents.contains(id), stated, "id {}", id);
            }
        }

        /// No input panics, and none takes more than linear work: every string of the
        /// base64url alphabet decodes or is refused.
        #[test]
        fn any_string_decodes_or_is_refused(text in "[A-Za-z0-9_.=-]{0,300}") {
            let _ = TcString::decode(&text);
        }
    }
}
