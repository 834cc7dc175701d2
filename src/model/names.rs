//! The one rule for names that clients and services choose and that notifyd then uses as keys:
//! topic names (Redis channel names, retained rows, router keys) and user ids (a token's `sub`,
//! `to_user`, path ids: SQL rows, Redis keys, channel names, log fields). Contract §7 "Names".
//!
//! A name is 1 to N characters (N per kind of name), none of them
//! - whitespace (Unicode `White_Space`: spaces, tabs, CR, LF, NEL, no-break spaces, ...),
//! - a control character (general category Cc: U+0000, which PostgreSQL `text` refuses, and
//!   the C0/C1 controls that split log lines or protocol fields),
//! - a format character (general category Cf: bidi overrides and isolates such as U+202E and
//!   U+2066..U+2069, zero-width characters such as U+200B, U+200D and U+FEFF, tag characters):
//!   invisible, they make two different names look alike in logs, dashboards and UIs, or reorder
//!   what is shown around them.
//!
//! Every path that takes a name checks it here, so the rule cannot differ between them
//! (`model::topic::check_topic`, `model::input::check_user_id`). The general categories come from
//! the `unicode-properties` crate's tables rather than a hand-written list: Cf alone has ~170
//! code points in 20-odd ranges, and Unicode adds some in most releases
//! (docs/decisions/0008-name-rule-unicode-tables.md).

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Empty, or more characters than allowed.
    Length,
    /// This character is whitespace, a control or a format character.
    Char(char),
}

/// Checks `name` against the rule with at most `max_chars` characters (Unicode scalar values).
pub fn check(name: &str, max_chars: usize) -> Result<(), Refused> {
    let mut chars = 0usize;
    for c in name.chars() {
        chars += 1;
        if chars > max_chars {
            return Err(Refused::Length);
        }
        if !allowed(c) {
            return Err(Refused::Char(c));
        }
    }
    if chars == 0 {
        return Err(Refused::Length);
    }
    Ok(())
}

/// Whether `c` may stand in a name. Visible ASCII is decided without a table lookup (most names
/// are ASCII); the rest of ASCII is space or control.
pub fn allowed(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_graphic();
    }
    !c.is_whitespace()
        && !matches!(
            c.general_category(),
            GeneralCategory::Control | GeneralCategory::Format
        )
}

/// The format characters (Cf) of the Basic Multilingual Plane as the body of a regular
/// expression character class (`\uXXXX` escapes, which ECMA-262 and Python read alike): the
/// OpenAPI document's patterns for ids and topics exclude them, so a schema-valid name is one the
/// server accepts. Cf outside the BMP (tag characters, U+E0001, ...) cannot be written portably
/// without the `u` flag; the descriptions name them. A unit test keeps it equal to the tables.
pub const BMP_FORMAT_CLASS: &str = r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb";

/// The refused character as the error message names it (`U+202E`): printing it as is would
/// show nothing, or reorder the message around it.
pub fn describe(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_names_in_any_script_are_names() {
        for ok in [
            "product:42",
            "group:7",
            "u-1_2.3@x",
            "é",
            "Ürün:42",
            "商品:42",
            "продукт:1",
            "👍",
            // A combining mark (Mn) is visible with its base: not a format character.
            "e\u{301}",
        ] {
            assert_eq!(check(ok, 200), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn whitespace_control_and_format_characters_are_refused_wherever_they_are() {
        for c in [
            '\0',
            '\t',
            '\n',
            '\r',
            ' ',
            '\u{7f}',
            '\u{85}',
            '\u{9f}',
            '\u{a0}',
            '\u{1680}',
            '\u{2003}',
            '\u{2028}',
            '\u{3000}', // whitespace and Cc
            '\u{ad}',
            '\u{600}',
            '\u{61c}',
            '\u{180e}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202e}',
            '\u{2060}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{fff9}',
            '\u{110bd}',
            '\u{1d173}',
            '\u{e0001}',
            '\u{e007f}', // Cf
        ] {
            for name in [format!("{c}ab"), format!("a{c}b"), format!("ab{c}")] {
                assert_eq!(check(&name, 200), Err(Refused::Char(c)), "{name:?}");
            }
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(check("", 5), Err(Refused::Length));
        assert_eq!(check(&"é".repeat(5), 5), Ok(()));
        assert_eq!(check(&"é".repeat(6), 5), Err(Refused::Length));
        // A long name is refused without reading all of it.
        assert_eq!(check(&"x".repeat(1 << 20), 200), Err(Refused::Length));
    }

    /// The pattern's class is the tables' Cf set of the BMP, range by range.
    #[test]
    fn the_bmp_format_class_is_the_tables_cf_set() {
        let mut ranges = String::new();
        let mut start: Option<u32> = None;
        for cp in 0x80u32..=0x1_0000 {
            let cf =
                char::from_u32(cp).is_some_and(|c| c.general_category() == GeneralCategory::Format);
            match (cf, start) {
                (true, None) => start = Some(cp),
                (false, Some(first)) => {
                    ranges += &format!("\\u{first:04x}");
                    if first != cp - 1 {
                        ranges += &format!("-\\u{:04x}", cp - 1);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        assert_eq!(BMP_FORMAT_CLASS, ranges);
    }

    #[test]
    fn refused_characters_are_described_by_code_point() {
        assert_eq!(describe('\u{202e}'), "U+202E");
        assert_eq!(describe('\0'), "U+0000");
        assert_eq!(describe('\u{e0001}'), "U+E0001");
    }
}
