//! Splitting an answer into Telegram-sized messages.
//!
//! Telegram counts a message's length in UTF-16 code units (an emoji outside
//! the Basic Multilingual Plane counts two). A long answer is cut at the last
//! paragraph break that leaves the part at least half full, else the last line
//! break, else the last space, else at the limit on a character boundary.
//! Only the whitespace at a cut is dropped; every other character arrives, in
//! order.

/// Splits `text` into parts of at most `max_units` UTF-16 code units each.
/// Returns no parts for blank text. `max_units` must be at least 2 so any
/// character fits; smaller values are treated as 2.
pub fn split_message(text: &str, max_units: usize) -> Vec<String> {
    split_ranges(text, max_units)
        .into_iter()
        .map(|range| text[range].to_owned())
        .collect()
}

/// [`split_message`] as byte ranges of `text`, so what is attached to the
/// text (message entities) can be cut the same way.
pub fn split_ranges(text: &str, max_units: usize) -> Vec<std::ops::Range<usize>> {
    let max_units = max_units.max(2);
    let end = text.trim_end().len();
    let mut start = text.len() - text.trim_start().len();
    let mut ranges = Vec::new();
    while start < end {
        let rest = &text[start..end];
        let limit = prefix_within(rest, max_units);
        if limit == rest.len() {
            ranges.push(start..end);
            break;
        }
        let cut = best_cut(&rest[..limit], limit);
        let part_len = rest[..cut].trim_end().len();
        if part_len > 0 {
            ranges.push(start..start + part_len);
        }
        let tail = &rest[cut..];
        start += cut + (tail.len() - tail.trim_start().len());
    }
    ranges
}

/// Length in UTF-16 code units, as Telegram counts.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// Byte index of the longest prefix of `text` within `max_units`.
fn prefix_within(text: &str, max_units: usize) -> usize {
    let mut units = 0;
    for (index, ch) in text.char_indices() {
        units += ch.len_utf16();
        if units > max_units {
            return index;
        }
    }
    text.len()
}

/// Where to cut `window` (a prefix of the remaining text ending at byte
/// `limit`): the best boundary in its second half, else any space, else the
/// limit itself.
fn best_cut(window: &str, limit: usize) -> usize {
    let half = window.len() / 2;
    let in_second_half = |pos: Option<usize>| pos.filter(|&p| p > 0 && p >= half);
    in_second_half(window.rfind("\n\n"))
        .or_else(|| in_second_half(window.rfind('\n')))
        .or_else(|| window.rfind(char::is_whitespace).filter(|&p| p > 0))
        .unwrap_or(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn squeeze(text: &str) -> String {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_message("  hello  ", 4096), vec!["hello"]);
        assert!(split_message(" \n ", 4096).is_empty());
    }

    #[test]
    fn prefers_paragraphs_then_lines_then_words() {
        let text = format!("{}\n\n{}", "a".repeat(60), "b".repeat(60));
        assert_eq!(
            split_message(&text, 100),
            vec!["a".repeat(60), "b".repeat(60)]
        );
        let text = format!("{}\n{}", "a".repeat(60), "b".repeat(60));
        assert_eq!(
            split_message(&text, 100),
            vec!["a".repeat(60), "b".repeat(60)]
        );
        let text = format!("{} {}", "a".repeat(60), "b".repeat(60));
        assert_eq!(
            split_message(&text, 100),
            vec!["a".repeat(60), "b".repeat(60)]
        );
    }

    #[test]
    fn a_word_longer_than_the_limit_is_cut_hard() {
        let parts = split_message(&"x".repeat(250), 100);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= 100));
    }

    #[test]
    fn emoji_count_as_two_units_and_are_never_cut() {
        let text = "😀".repeat(100);
        let parts = split_message(&text, 51);
        assert!(parts.iter().all(|p| utf16_len(p) <= 51));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn ten_thousand_characters_fit_in_three_messages() {
        let text: String = (0..2000).map(|i| format!("w{i:03} ")).collect();
        let parts = split_message(&text, 4096);
        assert_eq!(parts.len(), 3);
        assert_eq!(squeeze(&parts.concat()), squeeze(&text));
    }

    proptest! {
        #[test]
        fn parts_fit_and_nothing_is_lost(
            text in "([a-zя😀]{0,12}[ \n]{0,3}){0,80}",
            max in 2usize..60,
        ) {
            let parts = split_message(&text, max);
            for part in &parts {
                prop_assert!(!part.is_empty());
                prop_assert!(utf16_len(part) <= max, "{part:?} exceeds {max}");
            }
            prop_assert_eq!(squeeze(&parts.concat()), squeeze(&text));
        }
    }
}
