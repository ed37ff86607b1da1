//! Object key decoding.

use std::borrow::Cow;

/// Decodes an object key as S3 writes it into notifications: form-URL encoding, so `+` is a
/// space and `%XX` is a byte. `%2F` and a literal `/` both decode to `/`.
///
/// Returns `None` when the decoded bytes are not UTF-8 (S3 keys always are). A `%` not followed
/// by two hex digits is kept literally, as browsers and S3 do.
pub fn decode_key(raw: &str) -> Option<String> {
    let spaced: Cow<'_, str> = if raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::decode_key;

    #[test]
    fn aws_documented_examples() {
        // notification-content-structure: "red flower.jpg" arrives as "red+flower.jpg".
        assert_eq!(
            decode_key("red+flower.jpg").as_deref(),
            Some("red flower.jpg")
        );
        assert_eq!(decode_key("dir%2Fa.txt").as_deref(), Some("dir/a.txt"));
        assert_eq!(decode_key("dir/a.txt").as_deref(), Some("dir/a.txt"));
    }

    #[test]
    fn plus_sign_and_unicode() {
        // A literal '+' is sent as %2B; a space as '+'.
        assert_eq!(
            decode_key("dir/a+b%2Bc.txt").as_deref(),
            Some("dir/a b+c.txt")
        );
        assert_eq!(decode_key("caf%C3%A9/%E2%9C%93").as_deref(), Some("café/✓"));
        // Already-decoded unicode passes through.
        assert_eq!(decode_key("café").as_deref(), Some("café"));
    }

    #[test]
    fn malformed_escapes() {
        assert_eq!(decode_key("100%").as_deref(), Some("100%"));
        assert_eq!(decode_key("a%zzb").as_deref(), Some("a%zzb"));
        // %FF alone is not UTF-8.
        assert_eq!(decode_key("a%FFb"), None);
    }
}
