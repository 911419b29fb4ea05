//! LLM answers are Markdown; Telegram gets plain text with message entities
//! instead of a parse mode, so "can't parse entities" cannot happen whatever
//! the model writes. Long answers are split with [`split_ranges`] and each
//! entity is cut to the parts it spans: a code block that must be split is
//! closed at the end of one message and reopened at the start of the next.

use std::ops::Range;

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use teloxide::types::{MessageEntity, MessageEntityKind};

use super::buttons::Keyboard;
use super::split::{split_ranges, utf16_len};

/// A formatting span over the rendered text (byte offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The formatting.
    pub kind: SpanKind,
    /// Byte range in the rendered text.
    pub range: Range<usize>,
}

/// Formatting llmgram renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanKind {
    /// `**bold**` and headings.
    Bold,
    /// `*italic*`.
    Italic,
    /// `~~struck~~`.
    Strikethrough,
    /// `` `code` ``.
    Code,
    /// A fenced or indented code block, with its language when given.
    Pre(Option<String>),
    /// `[text](url)`.
    Link(String),
    /// `> quote`.
    Blockquote,
}

/// Rendered Markdown: plain text and its spans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The text without Markdown syntax.
    pub text: String,
    /// Formatting over it.
    pub spans: Vec<Span>,
}

/// One Telegram message: text and entities (UTF-16 offsets, as Telegram
/// counts), and the inline keyboard under it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutgoingText {
    /// The text.
    pub text: String,
    /// Its formatting.
    pub entities: Vec<MessageEntity>,
    /// Buttons under the message. An edit sends it too: an edit without
    /// one removes the buttons the message had.
    pub keyboard: Option<Keyboard>,
}

impl OutgoingText {
    /// Plain text, no formatting (the bot's own texts).
    pub fn plain(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            entities: Vec::new(),
            keyboard: None,
        }
    }

    /// The same message with `keyboard` under it.
    #[must_use]
    pub fn with_keyboard(mut self, keyboard: Option<Keyboard>) -> Self {
        self.keyboard = keyboard;
        self
    }
}

/// Renders Markdown to text and spans.
pub fn render_markdown(markdown: &str) -> Rendered {
    let mut out = Rendered::default();
    let mut open: Vec<(SpanKind, usize)> = Vec::new();
    // Per open list: the next number of an ordered list, or None.
    let mut lists: Vec<Option<u64>> = Vec::new();
    let options = Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    for event in Parser::new_ext(markdown, options) {
        let text = &mut out.text;
        match event {
            Event::Start(tag) => match tag {
                Tag::Strong | Tag::Heading { .. } => open.push((SpanKind::Bold, text.len())),
                Tag::Emphasis => open.push((SpanKind::Italic, text.len())),
                Tag::Strikethrough => open.push((SpanKind::Strikethrough, text.len())),
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    open.push((SpanKind::Link(dest_url.to_string()), text.len()));
                }
                Tag::BlockQuote(_) => open.push((SpanKind::Blockquote, text.len())),
                Tag::CodeBlock(kind) => {
                    let language = match kind {
                        CodeBlockKind::Fenced(info) => info
                            .split_whitespace()
                            .next()
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                        CodeBlockKind::Indented => None,
                    };
                    open.push((SpanKind::Pre(language), text.len()));
                }
                Tag::List(first) => lists.push(first),
                Tag::Item => {
                    let depth = lists.len().saturating_sub(1);
                    text.push_str(&"  ".repeat(depth));
                    match lists.last_mut() {
                        Some(Some(number)) => {
                            text.push_str(&format!("{number}. "));
                            *number += 1;
                        }
                        _ => text.push_str("• "),
                    }
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Strong
                | TagEnd::Emphasis
                | TagEnd::Strikethrough
                | TagEnd::Link
                | TagEnd::Image => close(&mut open, &mut out.spans, text.len()),
                TagEnd::Heading(_) => {
                    close(&mut open, &mut out.spans, text.len());
                    text.push_str("\n\n");
                }
                TagEnd::CodeBlock => {
                    while text.ends_with('\n') {
                        text.pop();
                    }
                    close(&mut open, &mut out.spans, text.len());
                    text.push_str("\n\n");
                }
                TagEnd::BlockQuote(_) => {
                    let end = text.trim_end().len();
                    close(&mut open, &mut out.spans, end);
                }
                TagEnd::Paragraph => text.push_str("\n\n"),
                TagEnd::Item if !text.ends_with('\n') => text.push('\n'),
                TagEnd::List(_) => {
                    lists.pop();
                    if lists.is_empty() {
                        text.push('\n');
                    }
                }
                _ => {}
            },
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => text.push_str(&t),
            Event::Code(t) => {
                let start = text.len();
                text.push_str(&t);
                out.spans.push(Span {
                    kind: SpanKind::Code,
                    range: start..text.len(),
                });
            }
            Event::SoftBreak | Event::HardBreak => text.push('\n'),
            Event::Rule => text.push_str("———\n\n"),
            Event::TaskListMarker(done) => text.push_str(if done { "☑ " } else { "☐ " }),
            _ => {}
        }
    }
    let end = out.text.trim_end().len();
    out.text.truncate(end);
    for span in &mut out.spans {
        span.range.end = span.range.end.min(end);
    }
    out.spans.retain(|span| span.range.start < span.range.end);
    out
}

/// The Markdown of an answer still being written, completed so that it
/// renders the way it will once finished, instead of showing raw markers
/// (`**E` as `**E`) until their closing half arrives. A trailing run of
/// markers (`*`, `_`, `~`, `` ` ``, `\\`), whose meaning only the next text
/// decides, is held back; bold, italic, strikethrough and inline code opened
/// in the last paragraph are closed. Inside an open code block nothing
/// changes (it already renders as code to the end).
pub fn complete_partial(markdown: &str) -> String {
    if in_open_fence(markdown) {
        return markdown.to_owned();
    }
    let held = markdown
        .trim_end()
        .trim_end_matches(['*', '_', '~', '`', '\\'])
        .trim_end();
    let paragraph_start = held.rfind("\n\n").map_or(0, |at| at + 2);
    let closers = unclosed(&held[paragraph_start..]);
    format!("{held}{closers}")
}

/// Whether the text ends inside a fenced code block.
fn in_open_fence(markdown: &str) -> bool {
    let mut fence: Option<(char, usize)> = None;
    for line in markdown.lines() {
        let line = line.trim_start_matches(' ');
        let Some(marker) = line.chars().next().filter(|c| matches!(c, '`' | '~')) else {
            continue;
        };
        let run = line.chars().take_while(|&c| c == marker).count();
        if run < 3 {
            continue;
        }
        fence = match fence {
            None => Some((marker, run)),
            Some((open, length)) if open == marker && run >= length => None,
            still => still,
        };
    }
    fence.is_some()
}

/// The markers that close what `paragraph` leaves open (a simplified
/// reading of CommonMark's delimiter rules: a run opens when text follows
/// it, closes when text precedes it, `_` never inside a word).
fn unclosed(paragraph: &str) -> String {
    let chars: Vec<char> = paragraph.chars().collect();
    // Open delimiters: the marker and how many of it (`**` is ('*', 2)).
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut code: Option<usize> = None;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch == '\\' && code.is_none() {
            i += 2;
            continue;
        }
        if !matches!(ch, '*' | '_' | '~' | '`') {
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == ch).count();
        let before = i.checked_sub(1).map(|at| chars[at]);
        let after = chars.get(i + run).copied();
        i += run;
        if ch == '`' {
            code = match code {
                None => Some(run),
                Some(length) if length == run => None,
                still => still,
            };
            continue;
        }
        if code.is_some() || (ch == '~' && run != 2) {
            continue;
        }
        let mut can_open = after.is_some_and(|c| !c.is_whitespace());
        let mut can_close = before.is_some_and(|c| !c.is_whitespace());
        if ch == '_'
            && before.is_some_and(char::is_alphanumeric)
            && after.is_some_and(char::is_alphanumeric)
        {
            can_open = false;
            can_close = false;
        }
        let mut left = run;
        if can_close {
            while let Some(&(marker, count)) = open.last() {
                if marker != ch || count > left {
                    break;
                }
                open.pop();
                left -= count;
                if left == 0 {
                    break;
                }
            }
        }
        if can_open && left > 0 {
            if left >= 2 {
                open.push((ch, 2));
                left -= 2;
            }
            if left >= 1 && ch != '~' {
                open.push((ch, 1));
            }
        }
    }
    let mut closers = String::new();
    if let Some(length) = code {
        closers.push_str(&"`".repeat(length));
    }
    for (marker, count) in open.iter().rev() {
        closers.extend(std::iter::repeat_n(*marker, *count));
    }
    closers
}

fn close(open: &mut Vec<(SpanKind, usize)>, spans: &mut Vec<Span>, end: usize) {
    if let Some((kind, start)) = open.pop() {
        spans.push(Span {
            kind,
            range: start..end,
        });
    }
}

/// Splits rendered text into Telegram messages of at most `max_units`
/// UTF-16 units, each with the part of every span that falls in it.
pub fn to_messages(rendered: &Rendered, max_units: usize) -> Vec<OutgoingText> {
    split_ranges(&rendered.text, max_units)
        .into_iter()
        .map(|part| {
            let text = &rendered.text;
            let entities = rendered
                .spans
                .iter()
                .filter_map(|span| {
                    let start = span.range.start.max(part.start);
                    let end = span.range.end.min(part.end);
                    if start >= end {
                        return None;
                    }
                    let kind = entity_kind(&span.kind)?;
                    Some(MessageEntity {
                        kind,
                        offset: utf16_len(&text[part.start..start]),
                        length: utf16_len(&text[start..end]),
                    })
                })
                .collect();
            OutgoingText {
                text: text[part].to_owned(),
                entities,
                keyboard: None,
            }
        })
        .collect()
}

fn entity_kind(kind: &SpanKind) -> Option<MessageEntityKind> {
    Some(match kind {
        SpanKind::Bold => MessageEntityKind::Bold,
        SpanKind::Italic => MessageEntityKind::Italic,
        SpanKind::Strikethrough => MessageEntityKind::Strikethrough,
        SpanKind::Code => MessageEntityKind::Code,
        SpanKind::Pre(language) => MessageEntityKind::Pre {
            language: language.clone(),
        },
        // A link Telegram would refuse (relative, javascript:) stays text.
        SpanKind::Link(url) => MessageEntityKind::TextLink {
            url: url::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https" | "tg" | "mailto"))?,
        },
        SpanKind::Blockquote => MessageEntityKind::Blockquote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_markdown_renders_as_it_will_when_finished() {
        let shown = |partial: &str| render_markdown(&complete_partial(partial)).text;
        assert_eq!(complete_partial("**E"), "**E**");
        assert_eq!(shown("**E"), "E");
        assert_eq!(shown("Use **bo"), "Use bo");
        assert_eq!(shown("Use `co"), "Use co");
        assert_eq!(shown("an *it"), "an it");
        assert_eq!(shown("a ~~gone"), "a gone");
        assert_eq!(shown("***both"), "both");
        assert_eq!(shown("Hello **"), "Hello");
        assert_eq!(shown("Hello *"), "Hello");
        assert_eq!(shown("done **bold** and"), "done bold and");
        assert_eq!(shown("done **bold**"), "done bold");
        assert_eq!(shown("2 * 3 = 6"), "2 * 3 = 6");
        assert_eq!(shown("snake_case_name"), "snake_case_name");
        assert_eq!(shown("`a*b` and **x"), "a*b and x");
        assert_eq!(shown("**a**\n\nnext"), "a\n\nnext");
        assert_eq!(shown("* item\n* it"), "• item\n• it");
        // Inside an open code block nothing is added.
        let fence = "```rust\nlet a = **b";
        assert_eq!(complete_partial(fence), fence);
        assert_eq!(
            shown("```rust\nfn x() {}\n```\n\nand **y"),
            "fn x() {}\n\nand y"
        );
    }
    use proptest::prelude::*;

    fn entity(kind: MessageEntityKind, offset: usize, length: usize) -> MessageEntity {
        MessageEntity {
            kind,
            offset,
            length,
        }
    }

    #[test]
    fn inline_markdown_becomes_entities() {
        let rendered =
            render_markdown("Hi **bold** and *it* with `x = 1` and [a link](https://example.com).");
        assert_eq!(rendered.text, "Hi bold and it with x = 1 and a link.");
        let messages = to_messages(&rendered, 4096);
        assert_eq!(
            messages[0].entities,
            [
                entity(MessageEntityKind::Bold, 3, 4),
                entity(MessageEntityKind::Italic, 12, 2),
                entity(MessageEntityKind::Code, 20, 5),
                entity(
                    MessageEntityKind::TextLink {
                        url: url::Url::parse("https://example.com").unwrap()
                    },
                    30,
                    6
                ),
            ]
        );
    }

    #[test]
    fn offsets_are_utf16() {
        let rendered = render_markdown("😀 **жирный**");
        let messages = to_messages(&rendered, 4096);
        assert_eq!(
            messages[0].entities,
            [entity(MessageEntityKind::Bold, 3, 6)]
        );
    }

    #[test]
    fn blocks_lists_and_code() {
        let rendered = render_markdown("# Title\n\n- one\n- two\n\n```rust\nfn main() {}\n```\n");
        assert_eq!(rendered.text, "Title\n\n• one\n• two\n\nfn main() {}");
        let code = rendered.text.find("fn main").unwrap();
        assert!(rendered.spans.contains(&Span {
            kind: SpanKind::Pre(Some("rust".into())),
            range: code..rendered.text.len(),
        }));
    }

    #[test]
    fn unparseable_markdown_is_just_text() {
        let rendered = render_markdown("**unclosed and [broken](link and <b>tag");
        assert!(rendered.text.contains("unclosed"));
        assert!(to_messages(&rendered, 4096)[0].entities.is_empty() || !rendered.text.is_empty());
    }

    #[test]
    fn a_split_code_block_is_reopened_in_the_next_message() {
        let code: String = (0..400).map(|i| format!("line {i}\n")).collect();
        let rendered = render_markdown(&format!("Here:\n\n```\n{code}```\n\nDone."));
        let messages = to_messages(&rendered, 1000);
        assert!(messages.len() > 3);
        for message in &messages {
            let units = utf16_len(&message.text);
            assert!(units <= 1000);
            for e in &message.entities {
                assert!(e.offset + e.length <= units, "entity inside its message");
            }
        }
        let pre_parts = messages
            .iter()
            .filter(|m| {
                m.entities
                    .iter()
                    .any(|e| matches!(e.kind, MessageEntityKind::Pre { .. }))
            })
            .count();
        assert!(pre_parts >= 3, "the block continues as code in each part");
    }

    proptest! {
        #[test]
        fn any_markdown_renders_to_entities_inside_their_messages(
            markdown in "([a-zж😀 *_`#>\\[\\]()\\n-]{0,20}){0,30}",
            max in 8usize..80,
        ) {
            let rendered = render_markdown(&markdown);
            for message in to_messages(&rendered, max) {
                let units = utf16_len(&message.text);
                prop_assert!(units <= max);
                for e in message.entities {
                    prop_assert!(e.length > 0 && e.offset + e.length <= units);
                }
            }
        }
    }
}
