//! LLM answers are Markdown; Telegram gets plain text with message entities
//! instead of a parse mode, so "can't parse entities" cannot happen whatever
//! the model writes. Long answers are split with [`split_ranges`] and each
//! entity is cut to the parts it spans: a code block that must be split is
//! closed at the end of one message and reopened at the start of the next.

use std::ops::Range;

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use teloxide::types::{MessageEntity, MessageEntityKind};

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
/// counts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutgoingText {
    /// The text.
    pub text: String,
    /// Its formatting.
    pub entities: Vec<MessageEntity>,
}

impl OutgoingText {
    /// Plain text, no formatting (the bot's own texts).
    pub fn plain(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            entities: Vec::new(),
        }
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
