//! Write-ahead log positions.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A byte position in the write-ahead log, as PostgreSQL's `XLogRecPtr`.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// PostgreSQL's `InvalidXLogRecPtr`: no WAL position ever has this value.
    pub const INVALID: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers of at most 8 digits separated by '/', like 16/B374D848")]
pub struct LsnParseError {
    pub input: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || LsnParseError {
            input: text.to_owned(),
        };
        // Checked by hand because from_str_radix would also accept a sign.
        let half = |part: &str| {
            let well_formed =
                (1..=8).contains(&part.len()) && part.bytes().all(|byte| byte.is_ascii_hexdigit());
            if well_formed {
                u32::from_str_radix(part, 16).ok()
            } else {
                None
            }
        };
        let (high, low) = text.split_once('/').ok_or_else(error)?;
        let high = half(high).ok_or_else(error)?;
        let low = half(low).ok_or_else(error)?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgresql() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_what_it_displays() {
        for value in [0, 1, 0x1_0000_0000, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(value).to_string().parse::<Lsn>().unwrap(), Lsn(value));
        }
        assert_eq!("0/a".parse::<Lsn>().unwrap(), Lsn(10));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "+1/0",
            "1/-0",
            "123456789/0",
            "0/g",
            " 0/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} was accepted");
        }
    }
}
