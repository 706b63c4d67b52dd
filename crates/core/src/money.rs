//! Money is integer micros: a CPM of $2.50 is `Micros(2_500_000)`. Floating point only
//! exists at the OpenRTB boundary, where [`Micros::from_openrtb_price`] converts it once.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// Largest CPM we accept anywhere: $1,000,000 CPM. Anything above is a typo or an attack,
/// and keeping prices far from `i64::MAX` makes every sum and product safe.
pub const MAX_MICROS: i64 = 1_000_000 * MICROS_PER_UNIT;

/// An amount of money (a CPM) in millionths of a currency unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MoneyError {
    #[error("price must be a finite number, got {0}")]
    NotFinite(f64),
    #[error("price must not be negative, got {0}")]
    Negative(String),
    #[error("price is above the maximum of 1000000 per mille, got {0}")]
    TooLarge(String),
    #[error("not a decimal amount: {0:?} (expected e.g. \"2.50\")")]
    Malformed(String),
    #[error("unknown currency {0:?}: no rate is configured for it")]
    UnknownCurrency(String),
}

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// Converts an OpenRTB price (a CPM as a JSON number) to micros, rounding to the
    /// nearest micro.
    pub fn from_openrtb_price(price: f64) -> Result<Self, MoneyError> {
        if !price.is_finite() {
            return Err(MoneyError::NotFinite(price));
        }
        if price < 0.0 {
            return Err(MoneyError::Negative(price.to_string()));
        }
        let micros = (price * MICROS_PER_UNIT as f64).round();
        if micros > MAX_MICROS as f64 {
            return Err(MoneyError::TooLarge(price.to_string()));
        }
        Ok(Micros(micros as i64))
    }

    /// Parses a decimal amount such as `"2"`, `"2.5"` or `"0.000001"` exactly.
    pub fn parse_decimal(text: &str) -> Result<Self, MoneyError> {
        let malformed = || MoneyError::Malformed(text.to_string());
        let trimmed = text.trim();
        if trimmed.starts_with('-') {
            return Err(MoneyError::Negative(text.to_string()));
        }
        let (whole, fraction) = trimmed.split_once('.').unwrap_or((trimmed, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 6 {
            return Err(malformed());
        }
        let units: i64 = whole
            .parse()
            .map_err(|_| MoneyError::TooLarge(text.to_string()))?;
        let fraction_micros: i64 = if fraction.is_empty() {
            0
        } else {
            let parsed: i64 = fraction.parse().map_err(|_| malformed())?;
            parsed * 10_i64.pow(6 - fraction.len() as u32)
        };
        let micros = units
            .checked_mul(MICROS_PER_UNIT)
            .and_then(|m| m.checked_add(fraction_micros))
            .filter(|m| *m <= MAX_MICROS)
            .ok_or_else(|| MoneyError::TooLarge(text.to_string()))?;
        Ok(Micros(micros))
    }

    /// Checks a value received as raw micros (admin API, internal calls).
    pub fn checked(micros: i64) -> Result<Self, MoneyError> {
        match micros {
            m if m < 0 => Err(MoneyError::Negative(m.to_string())),
            m if m > MAX_MICROS => Err(MoneyError::TooLarge(m.to_string())),
            m => Ok(Micros(m)),
        }
    }
}

impl fmt::Display for Micros {
    /// Formats as a decimal amount with at least two decimals: `2.50`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let units = abs / MICROS_PER_UNIT as u64;
        let fraction = format!("{:06}", abs % MICROS_PER_UNIT as u64);
        let fraction = fraction.trim_end_matches('0');
        write!(f, "{sign}{units}.{fraction:0<2}")
    }
}

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Micros::parse_decimal(&text).map_err(serde::de::Error::custom)
    }
}

/// A multiplier on bids, in millionths: `Factor(950_000)` is 0.95. Written as a decimal
/// (`"0.95"`) in configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Factor(pub i64);

impl Factor {
    pub const ONE: Factor = Factor(MICROS_PER_UNIT);

    /// A bid adjustment as candidates carry it: millionths, 0 meaning none.
    pub fn from_adjustment_ppm(ppm: i64) -> Factor {
        if ppm == 0 { Factor::ONE } else { Factor(ppm) }
    }

    /// `amount` times this factor, rounded down to the micro.
    pub fn apply(self, amount: Micros) -> Micros {
        let product = i128::from(amount.0) * i128::from(self.0) / i128::from(MICROS_PER_UNIT);
        Micros(i64::try_from(product).unwrap_or(MAX_MICROS).min(MAX_MICROS))
    }

    /// The least amount that is still at least `amount` once this factor applies:
    /// `amount / factor`, rounded up (so `apply(gross_up(x)) >= x`).
    pub fn gross_up(self, amount: Micros) -> Micros {
        if self.0 <= 0 {
            return Micros(MAX_MICROS);
        }
        let numerator = i128::from(amount.0) * i128::from(MICROS_PER_UNIT);
        let divisor = i128::from(self.0);
        let quotient = (numerator + divisor - 1) / divisor;
        Micros(
            i64::try_from(quotient)
                .unwrap_or(MAX_MICROS)
                .min(MAX_MICROS),
        )
    }
}

impl Default for Factor {
    fn default() -> Self {
        Factor::ONE
    }
}

impl Serialize for Factor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Micros(self.0).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Factor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let factor = Micros::deserialize(deserializer)?;
        if factor.0 == 0 || factor.0 > 10 * MICROS_PER_UNIT {
            return Err(serde::de::Error::custom(
                "a bid adjustment must be greater than 0 and at most 10",
            ));
        }
        Ok(Factor(factor.0))
    }
}

/// The auction currency. Every price is converted to it at the door.
pub const AUCTION_CURRENCY: &str = "USD";

/// Exchange rates to the auction currency: for each currency, the value of one unit in
/// USD micros and the dates from which later values apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurrencyRates {
    /// Per upper-case code: (applies from, unix seconds; rate), ascending by date, the
    /// first from the beginning of time.
    schedules: HashMap<String, Vec<(i64, i64)>>,
}

impl CurrencyRates {
    /// Rates that apply at any time.
    pub fn new(rates: impl IntoIterator<Item = (String, i64)>) -> Self {
        Self::scheduled(
            rates
                .into_iter()
                .map(|(currency, rate)| (currency, vec![(i64::MIN, rate)])),
        )
    }

    /// Rates with the dates they apply from: per currency, (unix seconds, rate).
    pub fn scheduled(rates: impl IntoIterator<Item = (String, Vec<(i64, i64)>)>) -> Self {
        Self {
            schedules: rates
                .into_iter()
                .map(|(currency, mut schedule)| {
                    schedule.sort_unstable();
                    (currency.to_ascii_uppercase(), schedule)
                })
                .collect(),
        }
    }

    /// The rates in force at `unix_seconds`.
    pub fn at(&self, unix_seconds: i64) -> Rates<'_> {
        Rates {
            rates: self,
            at: unix_seconds,
        }
    }
}

/// The rates in force at one moment: what every conversion of one decision uses.
#[derive(Clone, Copy, Debug)]
pub struct Rates<'r> {
    rates: &'r CurrencyRates,
    at: i64,
}

impl Rates<'_> {
    /// Value of one unit of `currency` in USD micros (`MICROS_PER_UNIT` for USD or an
    /// empty code).
    pub fn rate(&self, currency: &str) -> Result<i64, MoneyError> {
        if currency.is_empty() || currency.eq_ignore_ascii_case(AUCTION_CURRENCY) {
            return Ok(MICROS_PER_UNIT);
        }
        let unknown = || MoneyError::UnknownCurrency(currency.to_string());
        let schedule = self
            .rates
            .schedules
            .get(&currency.to_ascii_uppercase())
            .ok_or_else(unknown)?;
        schedule
            .iter()
            .rev()
            .find(|(from, _)| *from <= self.at)
            .map(|(_, rate)| *rate)
            .ok_or_else(unknown)
    }

    /// Converts `amount` in `currency` (ISO-4217; empty means USD) to USD micros,
    /// rounding down.
    pub fn to_usd(&self, amount: Micros, currency: &str) -> Result<Micros, MoneyError> {
        let rate = self.rate(currency)?;
        let usd = i128::from(amount.0) * i128::from(rate) / i128::from(MICROS_PER_UNIT);
        i64::try_from(usd)
            .ok()
            .filter(|m| *m <= MAX_MICROS)
            .map(Micros)
            .ok_or_else(|| MoneyError::TooLarge(amount.to_string()))
    }

    /// Converts `usd` to `currency`, rounding up: a floor sent in another currency is
    /// never below the floor in USD.
    pub fn from_usd(&self, usd: Micros, currency: &str) -> Result<Micros, MoneyError> {
        let rate = i128::from(self.rate(currency)?);
        let amount = (i128::from(usd.0) * i128::from(MICROS_PER_UNIT) + rate - 1) / rate;
        i64::try_from(amount)
            .ok()
            .filter(|m| *m <= MAX_MICROS)
            .map(Micros)
            .ok_or_else(|| MoneyError::TooLarge(usd.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(Micros::parse_decimal("2").unwrap(), Micros(2_000_000));
        assert_eq!(Micros::parse_decimal("2.5").unwrap(), Micros(2_500_000));
        assert_eq!(Micros::parse_decimal("0.000001").unwrap(), Micros(1));
        assert_eq!(Micros::parse_decimal("0.10").unwrap(), Micros(100_000));
        assert!(Micros::parse_decimal("0.0000001").is_err());
        assert!(Micros::parse_decimal("-1").is_err());
        assert!(Micros::parse_decimal("1e3").is_err());
        assert!(Micros::parse_decimal(".5").is_err());
        assert!(Micros::parse_decimal("99999999999999999999").is_err());
    }

    #[test]
    fn converts_openrtb_prices_once() {
        assert_eq!(Micros::from_openrtb_price(0.03).unwrap(), Micros(30_000));
        assert_eq!(Micros::from_openrtb_price(9.43).unwrap(), Micros(9_430_000));
        assert!(Micros::from_openrtb_price(f64::NAN).is_err());
        assert!(Micros::from_openrtb_price(-0.01).is_err());
        assert!(Micros::from_openrtb_price(1e12).is_err());
    }

    #[test]
    fn displays_as_decimal() {
        assert_eq!(Micros(2_000_000).to_string(), "2.00");
        assert_eq!(Micros(2_500_000).to_string(), "2.50");
        assert_eq!(Micros(1).to_string(), "0.000001");
    }

    #[test]
    fn factors_scale_in_integers() {
        assert_eq!(Factor(950_000).apply(Micros(2_000_000)), Micros(1_900_000));
        assert_eq!(Factor::ONE.apply(Micros(7)), Micros(7));
        assert_eq!(
            Factor(1_000_001).apply(Micros(MAX_MICROS)),
            Micros(MAX_MICROS)
        );
    }

    #[test]
    fn gross_up_is_the_least_amount_that_survives_the_factor() {
        assert_eq!(
            Factor(800_000).gross_up(Micros(1_000_000)),
            Micros(1_250_000)
        );
        assert_eq!(Factor(300_000).gross_up(Micros(1)), Micros(4));
        assert_eq!(Factor(300_000).apply(Micros(4)), Micros(1));
        assert_eq!(Factor::ONE.gross_up(Micros(7)), Micros(7));
    }

    #[test]
    fn floors_convert_from_usd_rounding_up() {
        let rates = CurrencyRates::new([("EUR".to_string(), 1_100_000)]);
        let rates = rates.at(0);
        let eur = rates.from_usd(Micros(1_000_000), "EUR").unwrap();
        assert_eq!(eur, Micros(909_091));
        assert!(rates.to_usd(eur, "EUR").unwrap() >= Micros(1_000_000));
        assert!(rates.from_usd(Micros(1), "GBP").is_err());
    }

    #[test]
    fn a_scheduled_rate_applies_from_its_date() {
        let rates = CurrencyRates::scheduled([(
            "eur".to_string(),
            vec![(1_000, 1_200_000), (i64::MIN, 1_100_000)],
        )]);
        assert_eq!(rates.at(999).rate("EUR"), Ok(1_100_000));
        assert_eq!(rates.at(1_000).rate("EUR"), Ok(1_200_000));
        assert_eq!(rates.at(0).rate("USD"), Ok(MICROS_PER_UNIT));
        let future_only = CurrencyRates::scheduled([("GBP".to_string(), vec![(1_000, 1)])]);
        assert!(future_only.at(0).rate("GBP").is_err());
    }

    #[test]
    fn converts_currencies_in_integers() {
        let rates = CurrencyRates::new([("EUR".to_string(), 1_100_000)]);
        let rates = rates.at(0);
        assert_eq!(
            rates.to_usd(Micros(2_000_000), "EUR").unwrap(),
            Micros(2_200_000)
        );
        assert_eq!(
            rates.to_usd(Micros(2_000_000), "usd").unwrap(),
            Micros(2_000_000)
        );
        assert_eq!(
            rates.to_usd(Micros(2_000_000), "").unwrap(),
            Micros(2_000_000)
        );
        assert!(matches!(
            rates.to_usd(Micros(1), "GBP"),
            Err(MoneyError::UnknownCurrency(_))
        ));
    }
}
