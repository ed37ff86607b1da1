//! The S3 `sequencer` and its ordering rule.

use std::cmp::Ordering;
use std::fmt;

/// An S3 event `sequencer`: a hex string that orders events **for the same key only**.
///
/// AWS's rule (notification-content-structure): sequencers may differ in length; left-pad the
/// shorter with zeros, then compare lexicographically; the larger happened later.
///
/// On construction the string is normalised (upper case, leading zeros stripped), which makes
/// that rule "longer is larger, equal lengths compare lexicographically" and keeps `Eq`/`Hash`
/// consistent with `Ord` (`"0FF"` and `"ff"` are the same sequencer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sequencer(String);

impl Sequencer {
    /// Parses a sequencer; `None` if it is empty or not hexadecimal.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let trimmed = raw.trim_start_matches('0');
        let digits = if trimmed.is_empty() { "0" } else { trimmed };
        Some(Sequencer(digits.to_ascii_uppercase()))
    }

    /// The normalised hex string (upper case, no leading zeros).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for Sequencer {
    fn cmp(&self, other: &Self) -> Ordering {
        // Both are stripped of leading zeros, so left-padding to equal width and comparing is
        // the same as comparing lengths first, then bytes.
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for Sequencer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Sequencer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Sequencer;
    use proptest::prelude::*;

    fn s(x: &str) -> Sequencer {
        Sequencer::parse(x).unwrap_or_else(|| panic!("{x} should parse"))
    }

    #[test]
    fn shorter_is_left_padded() {
        assert!(s("0055AED6DCD90281E5") > s("55AED6DCD90281E4"));
        assert!(s("FF") > s("0EE"));
        assert_eq!(s("0FF"), s("FF"));
        assert_eq!(s("00A").cmp(&s("A")), std::cmp::Ordering::Equal);
        assert_eq!(s("000").as_str(), "0");
        assert!(s("100") > s("FF"));
    }

    #[test]
    fn case_is_normalised() {
        assert_eq!(s("abc"), s("ABC"));
        assert_eq!(s("abc").as_str(), "ABC");
    }

    #[test]
    fn rejects_non_hex() {
        assert!(Sequencer::parse("").is_none());
        assert!(Sequencer::parse("12G4").is_none());
        assert!(Sequencer::parse(" 12").is_none());
    }

    proptest! {
        /// The padded comparison agrees with comparing the numbers the hex strings denote.
        #[test]
        fn order_matches_numeric_value(a in any::<u64>(), b in any::<u64>(), pa in 0usize..4, pb in 0usize..4) {
            let sa = s(&format!("{}{:X}", "0".repeat(pa), a));
            let sb = s(&format!("{}{:x}", "0".repeat(pb), b));
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
            prop_assert_eq!(sa == sb, a == b);
        }
    }
}
