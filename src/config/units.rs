//! The value types of the config file: durations, sizes, rates, CIDRs and status codes,
//! each parsed once from its string form so the request path never sees a string.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration written as `"60s"`, `"1500ms"`, `"5m"`, `"1h"` or a combination (`"1m30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// A byte size written as a number of bytes or with a unit: `"512KiB"`, `"1MiB"`, `"1MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// A sustained rate written as `"N/s"`, `"N/m"` or `"N/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per `per`.
    pub count: u32,
    /// The period the count refers to.
    pub per: Duration,
}

impl Rate {
    /// The time one request's worth of quota takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The longest duration a config may name.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid duration {s:?}: expected e.g. \"60s\", \"1500ms\", \"5m\", \"1h\"");
        let mut total = Duration::ZERO;
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(unit);
            rest = &rest[unit_len..];
        }
        // Deadlines are `now + duration`: keep them far from the clock's end.
        if total > MAX_DURATION {
            return Err(format!("duration {s:?} is longer than a year"));
        }
        Ok(Dur(total))
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid size {s:?}: expected bytes or e.g. \"64KiB\", \"1MiB\", \"1MB\"");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let n: u64 = t[..split].parse().map_err(|_| bad())?;
        let mult: u64 = match t[split..].trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Size).ok_or_else(bad)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {s:?}: expected \"N/s\", \"N/m\" or \"N/h\" with N > 0");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }
}

/// A network in CIDR form (`"10.0.0.0/8"`), or a single address (`"::1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Cidr)
            .map_err(|_| format!("invalid network {s:?}: expected e.g. \"10.0.0.0/8\" or \"::1\""))
    }
}

/// Deserializes any `FromStr` value from a TOML string, keeping its error text.
struct FromStrVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<T: FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        // Only sizes accept a bare number; the others reject it with their own message.
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

macro_rules! deserialize_from_str {
    ($ty:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(FromStrVisitor(std::marker::PhantomData, $what))
            }
        }
    };
}

deserialize_from_str!(Dur, "a duration such as \"60s\"");
deserialize_from_str!(Size, "a size such as \"1MiB\"");
deserialize_from_str!(Rate, "a rate such as \"1/s\"");
deserialize_from_str!(Cidr, "a network such as \"10.0.0.0/8\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_combinations() {
        assert_eq!("60s".parse(), Ok(Dur(Duration::from_secs(60))));
        assert_eq!("1500ms".parse(), Ok(Dur(Duration::from_millis(1500))));
        assert_eq!("1m30s".parse(), Ok(Dur(Duration::from_secs(90))));
        assert_eq!("2h".parse(), Ok(Dur(Duration::from_secs(7200))));
        assert_eq!("8760h".parse(), Ok(Dur(Duration::from_secs(8760 * 3600))));
        for bad in [
            "",
            "60",
            "s",
            "10x",
            "-1s",
            "1.5s",
            "8761h",
            "9999999999999999h",
        ] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("1MiB".parse(), Ok(Size(1 << 20)));
        assert_eq!("64KiB".parse(), Ok(Size(64 << 10)));
        assert_eq!("1MB".parse(), Ok(Size(1_000_000)));
        assert_eq!("100".parse(), Ok(Size(100)));
        assert!("1TiB".parse::<Size>().is_err());
        assert!("99999999999999999999GiB".parse::<Size>().is_err());
    }

    #[test]
    fn rates_need_a_positive_count_and_a_unit() {
        let r: Rate = "100/m".parse().unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(60)));
        assert_eq!(r.interval(), Duration::from_millis(600));
        assert_eq!(r.to_string(), "100/m");
        for bad in ["0/s", "1/d", "1", "x/s", "/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} should not parse");
        }
    }
}
