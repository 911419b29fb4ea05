//! The text of a document sent to the bot: a text-like file or a PDF.
//!
//! A document becomes text the model can read, or a typed refusal:
//!
//! - **PDF** (MIME `application/pdf`, a `.pdf` name, or `%PDF-` in the first
//!   KiB): text extracted with `pdf-extract` (pure Rust, on `lopdf`), run
//!   under [`std::panic::catch_unwind`] because PDF parsers panic on hostile
//!   input; blank-line runs collapsed. A PDF with no text layer (a scan) is
//!   [`DocumentError::NoText`]; one locked with a user password is
//!   [`DocumentError::Encrypted`].
//! - **Text**: a UTF-8 byte-order mark is stripped, UTF-16 with a BOM is
//!   decoded, anything else is read as UTF-8, invalid sequences replaced
//!   (and flagged `lossy`). Whatever the name and MIME type say, the first
//!   8 KiB are checked first: a NUL byte or too many control bytes and
//!   invalid sequences make it binary ([`DocumentError::Unsupported`]). A
//!   name or MIME type known to be text only makes that check more lenient,
//!   so a script sent as `application/octet-stream` without a name is still
//!   read.
//!
//! The text is cut at `max_chars` characters (never inside one), and
//! [`DocumentText::total_chars`] says how long it was. Work is bounded by
//! the input: the caller caps the download size.

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// How much of the start of a file the binary check reads.
const SNIFF_BYTES: usize = 8 * 1024;

/// Where a PDF's `%PDF-` header may start (readers accept leading junk).
const PDF_HEADER_WITHIN: usize = 1024;

/// MIME types (besides `text/*`) whose content is text.
const TEXT_MIMES: &[&str] = &[
    "application/json",
    "application/ld+json",
    "application/x-ndjson",
    "application/xml",
    "application/xhtml+xml",
    "application/x-yaml",
    "application/yaml",
    "application/toml",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/typescript",
    "application/x-sh",
    "application/x-shellscript",
    "application/sql",
    "application/x-sql",
    "application/x-python",
    "application/x-python-code",
    "application/x-perl",
    "application/x-ruby",
    "application/x-php",
    "application/x-tex",
    "application/x-latex",
    "application/x-subrip",
    "application/csv",
    "application/rtf",
    "application/graphql",
];

/// File name extensions (lowercase, no dot) of text files.
const TEXT_EXTENSIONS: &[&str] = &[
    // documents and data
    "txt",
    "text",
    "md",
    "markdown",
    "rst",
    "adoc",
    "org",
    "tex",
    "csv",
    "tsv",
    "json",
    "jsonl",
    "ndjson",
    "xml",
    "yaml",
    "yml",
    "toml",
    "ini",
    "cfg",
    "conf",
    "env",
    "properties",
    "log",
    "html",
    "htm",
    "css",
    "scss",
    "srt",
    "vtt",
    "diff",
    "patch", // source code
    "rs",
    "py",
    "js",
    "mjs",
    "cjs",
    "ts",
    "tsx",
    "jsx",
    "go",
    "java",
    "kt",
    "kts",
    "c",
    "h",
    "cpp",
    "hpp",
    "cc",
    "cxx",
    "cs",
    "rb",
    "php",
    "swift",
    "sh",
    "bash",
    "zsh",
    "fish",
    "ps1",
    "bat",
    "sql",
    "lua",
    "r",
    "scala",
    "dart",
    "m",
    "pl",
    "hs",
    "ex",
    "exs",
    "erl",
    "clj",
    "vue",
    "svelte",
    "gradle",
    "cmake",
    "proto",
    "graphql",
    "nix",
    "zig",
    "jl",
    "ml",
    "elm",
    "tf",
    "dockerfile",
    "makefile",
];

/// What kind of document the text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentKind {
    /// A text-like file (plain text, data, markup, source code).
    Text,
    /// A PDF's text layer.
    Pdf,
}

impl DocumentKind {
    /// A short fixed name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Pdf => "pdf",
        }
    }
}

/// The text read from a document, cut to the caller's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentText {
    /// The text, at most `max_chars` characters.
    pub text: String,
    /// Where it came from.
    pub kind: DocumentKind,
    /// Invalid UTF-8 (or UTF-16) was replaced by U+FFFD.
    pub lossy: bool,
    /// The text was cut at `max_chars` characters.
    pub truncated: bool,
    /// The length of the whole text, in characters, before any cut.
    pub total_chars: usize,
}

/// Why a document gives no text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// No bytes, or nothing but whitespace.
    #[error("the document is empty")]
    Empty,
    /// Binary content that is not a PDF (an archive, an office file, …).
    #[error("the document is not text or PDF")]
    Unsupported,
    /// A PDF that cannot be parsed.
    #[error("the PDF is corrupt")]
    Corrupt,
    /// A PDF without a text layer (a scan, or only images).
    #[error("the PDF has no text")]
    NoText,
    /// A PDF that needs a password to open.
    #[error("the PDF is encrypted")]
    Encrypted,
}

impl DocumentError {
    /// A short fixed name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Unsupported => "unsupported",
            Self::Corrupt => "corrupt",
            Self::NoText => "no_text",
            Self::Encrypted => "encrypted",
        }
    }
}

/// Reads the text of a document: a PDF's text layer, or a text-like file
/// decoded, either cut at `max_chars` characters. `file_name` and
/// `mime_type` are what the sender declared (Telegram passes both on).
pub fn read_document(
    bytes: &[u8],
    file_name: Option<&str>,
    mime_type: Option<&str>,
    max_chars: usize,
) -> Result<DocumentText, DocumentError> {
    if bytes.is_empty() {
        return Err(DocumentError::Empty);
    }
    let mime = mime_type.map(base_mime);
    let extension = file_name.and_then(extension);
    let declared_text = mime.as_deref().is_some_and(is_text_mime)
        || extension
            .as_deref()
            .is_some_and(|e| TEXT_EXTENSIONS.contains(&e));
    if looks_like_pdf(bytes, mime.as_deref(), extension.as_deref(), declared_text) {
        let text = extract_pdf(bytes)?;
        return Ok(cut(text, DocumentKind::Pdf, false, max_chars));
    }
    let (text, lossy) = decode_text(bytes, declared_text)?;
    if text.trim().is_empty() {
        return Err(DocumentError::Empty);
    }
    Ok(cut(text.into_owned(), DocumentKind::Text, lossy, max_chars))
}

/// The MIME type without parameters, lowercase (`Text/Plain; charset=x` →
/// `text/plain`).
fn base_mime(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The lowercase extension of a file name (`Notes.MD` → `md`), or the whole
/// lowercase name for extensionless names known as text (`Makefile`,
/// `Dockerfile`).
fn extension(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => Some(ext.to_ascii_lowercase()),
        _ => Some(base.to_ascii_lowercase()),
    }
}

fn is_text_mime(mime: &str) -> bool {
    mime.starts_with("text/")
        || TEXT_MIMES.contains(&mime)
        || mime.ends_with("+json")
        || mime.ends_with("+xml")
}

/// A PDF by its declared type, or by its header: at the start, or anywhere in
/// the first KiB unless the sender declared text (a note that mentions
/// `%PDF-` is still a note).
fn looks_like_pdf(
    bytes: &[u8],
    mime: Option<&str>,
    extension: Option<&str>,
    declared_text: bool,
) -> bool {
    let head = &bytes[..bytes.len().min(PDF_HEADER_WITHIN)];
    bytes.starts_with(b"%PDF-")
        || (!declared_text && head.windows(5).any(|w| w == b"%PDF-"))
        || mime == Some("application/pdf")
        || extension == Some("pdf")
}

/// Decodes text by its byte-order mark (UTF-8 or UTF-16), else as UTF-8
/// with invalid sequences replaced, after the binary check. Returns the text
/// and whether anything was replaced.
fn decode_text(bytes: &[u8], declared_text: bool) -> Result<(Cow<'_, str>, bool), DocumentError> {
    if let Some((encoding, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let body = &bytes[bom_len..];
        if encoding == encoding_rs::UTF_8 {
            check_text(body, declared_text)?;
        }
        // UTF-16 text is full of NUL bytes: its BOM is the evidence.
        let (text, had_errors) = encoding.decode_without_bom_handling(body);
        if encoding != encoding_rs::UTF_8 && looks_binary(&text, declared_text) {
            return Err(DocumentError::Unsupported);
        }
        return Ok((text, had_errors));
    }
    check_text(bytes, declared_text)?;
    let text = String::from_utf8_lossy(bytes);
    let lossy = matches!(text, Cow::Owned(_));
    Ok((text, lossy))
}

/// Refuses bytes whose first [`SNIFF_BYTES`] hold a NUL or too much that is
/// neither text nor whitespace.
fn check_text(bytes: &[u8], declared_text: bool) -> Result<(), DocumentError> {
    let sample = &bytes[..bytes.len().min(SNIFF_BYTES)];
    if sample.contains(&0) {
        return Err(DocumentError::Unsupported);
    }
    // A multi-byte character cut by the sample's end is not evidence.
    let cut_tail = match std::str::from_utf8(sample) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => sample.len() - e.valid_up_to(),
        Err(_) => 0,
    };
    let sample = String::from_utf8_lossy(&sample[..sample.len() - cut_tail]);
    if looks_binary(&sample, declared_text) {
        return Err(DocumentError::Unsupported);
    }
    Ok(())
}

/// Whether too many of the first [`SNIFF_BYTES`] worth of characters are
/// control characters (other than whitespace and escape) or replacement
/// characters: more than a third for a declared text file, a tenth for one
/// of unknown type.
fn looks_binary(text: &str, declared_text: bool) -> bool {
    let mut total = 0usize;
    let mut suspicious = 0usize;
    for c in text.chars() {
        if total == SNIFF_BYTES {
            break;
        }
        total += 1;
        let control = c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0C' | '\x1B');
        if control || c == '\0' || c == char::REPLACEMENT_CHARACTER {
            suspicious += 1;
        }
    }
    let divisor = if declared_text { 3 } else { 10 };
    suspicious > total / divisor
}

/// Extracts a PDF's text, catching the parser's panics.
fn extract_pdf(bytes: &[u8]) -> Result<String, DocumentError> {
    let extracted = catch_unwind(AssertUnwindSafe(|| {
        pdf_extract::extract_text_from_mem(bytes)
    }));
    let raw = match extracted {
        Ok(Ok(text)) => text,
        Ok(Err(pdf_extract::OutputError::PdfError(
            pdf_extract::Error::Decryption(_) | pdf_extract::Error::InvalidPassword,
        ))) => return Err(DocumentError::Encrypted),
        Ok(Err(_)) | Err(_) => return Err(DocumentError::Corrupt),
    };
    let text = normalise_whitespace(&raw);
    if text.is_empty() {
        return Err(DocumentError::NoText);
    }
    Ok(text)
}

/// Trims every line's end and the whole text, and collapses runs of blank
/// lines into one (PDF extraction leaves many).
fn normalise_whitespace(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut blank_run = 0usize;
    for line in raw.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    // A page break (form feed) or stray leading spaces are no content.
    let trimmed = out.trim_matches(|c: char| c.is_whitespace());
    if trimmed.len() == out.len() {
        out
    } else {
        trimmed.to_owned()
    }
}

/// Cuts `text` at `max_chars` characters.
fn cut(mut text: String, kind: DocumentKind, lossy: bool, max_chars: usize) -> DocumentText {
    let mut total_chars = 0usize;
    let mut cut_at = None;
    for (index, _) in text.char_indices() {
        if total_chars == max_chars {
            cut_at = Some(index);
        }
        total_chars += 1;
    }
    let truncated = cut_at.is_some();
    if let Some(index) = cut_at {
        text.truncate(index);
    }
    DocumentText {
        text,
        kind,
        lossy,
        truncated,
        total_chars,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Instant;

    const HELLO_PDF: &[u8] = include_bytes!("../../tests/fixtures/hello.pdf");

    fn read(
        bytes: &[u8],
        name: Option<&str>,
        mime: Option<&str>,
    ) -> Result<DocumentText, DocumentError> {
        read_document(bytes, name, mime, 10_000)
    }

    #[test]
    fn extracts_the_fixture_pdf() {
        let started = Instant::now();
        let doc = read(HELLO_PDF, Some("hello.pdf"), Some("application/pdf")).unwrap();
        println!("hello.pdf extracted in {:?}", started.elapsed());
        assert_eq!(doc.kind, DocumentKind::Pdf);
        assert!(doc.text.contains("Hello from a PDF"), "{:?}", doc.text);
        assert!(doc.text.contains("Second line"), "{:?}", doc.text);
        assert!(!doc.lossy && !doc.truncated);
        assert_eq!(doc.total_chars, doc.text.chars().count());
        // Known by its magic alone too.
        assert_eq!(read(HELLO_PDF, None, None).unwrap().text, doc.text);
    }

    #[test]
    fn corrupt_pdf_is_corrupt() {
        let mut cut = HELLO_PDF.to_vec();
        cut.truncate(HELLO_PDF.len() / 3);
        assert_eq!(read(&cut, None, None), Err(DocumentError::Corrupt));
        assert_eq!(
            read(b"%PDF-1.4\nnot really", Some("x.pdf"), None),
            Err(DocumentError::Corrupt)
        );
        assert_eq!(
            read(b"plain words", None, Some("application/pdf")),
            Err(DocumentError::Corrupt)
        );
        assert_eq!(DocumentError::Corrupt.label(), "corrupt");
    }

    #[test]
    fn password_locked_pdf_is_encrypted() {
        // hello.pdf through `qpdf --encrypt secret owner 128 --use-aes=y`.
        let locked = include_bytes!("../../tests/fixtures/encrypted.pdf");
        assert_eq!(read(locked, None, None), Err(DocumentError::Encrypted));
        assert_eq!(DocumentError::Encrypted.label(), "encrypted");
    }

    #[test]
    fn pdf_with_only_an_owner_password_is_read() {
        // The same with an empty user password (copy or print restricted).
        let restricted = include_bytes!("../../tests/fixtures/owner-only.pdf");
        let doc = read(restricted, None, None).unwrap();
        assert!(doc.text.contains("Hello from a PDF"), "{:?}", doc.text);
    }

    #[test]
    fn pdf_header_after_junk_is_a_pdf_unless_declared_text() {
        let mut junk = b"\r\n\r\n".to_vec();
        junk.extend_from_slice(HELLO_PDF);
        assert_eq!(read(&junk, None, None).unwrap().kind, DocumentKind::Pdf);
        let note = b"Files start with %PDF-1.7 and end with %%EOF.";
        assert_eq!(
            read(note, Some("notes.md"), None).unwrap().kind,
            DocumentKind::Text
        );
    }

    #[test]
    fn pdf_without_text_is_no_text() {
        let blank = pdf_with_content("");
        assert_eq!(read(&blank, None, None), Err(DocumentError::NoText));
    }

    #[test]
    fn empty_is_empty() {
        assert_eq!(read(b"", Some("a.txt"), None), Err(DocumentError::Empty));
        assert_eq!(
            read(b" \n\t\n", Some("a.txt"), None),
            Err(DocumentError::Empty)
        );
        assert_eq!(read(b"\xEF\xBB\xBF", None, None), Err(DocumentError::Empty));
    }

    #[test]
    fn utf8_text_and_bom() {
        let doc = read("\u{FEFF}Привет, мир".as_bytes(), Some("a.txt"), None).unwrap();
        assert_eq!(doc.text, "Привет, мир");
        assert_eq!(doc.kind, DocumentKind::Text);
        assert!(!doc.lossy && !doc.truncated);
        assert_eq!(doc.total_chars, 11);
    }

    #[test]
    fn utf16_with_bom_is_decoded() {
        let text = "héllo wörld 👋\nline two";
        let mut le = vec![0xFF, 0xFE];
        le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let mut be = vec![0xFE, 0xFF];
        be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        for bytes in [le, be] {
            let doc = read(&bytes, Some("notes.txt"), Some("text/plain")).unwrap();
            assert_eq!(doc.text, text);
            assert!(!doc.lossy);
        }
    }

    #[test]
    fn invalid_utf8_is_read_lossily() {
        let doc = read(b"caf\xE9 au lait, na\xEFve", Some("menu.txt"), None).unwrap();
        assert_eq!(doc.text, "caf\u{FFFD} au lait, na\u{FFFD}ve");
        assert!(doc.lossy);
    }

    #[test]
    fn truncates_by_chars_not_bytes() {
        let text = "Ёжик🦔в тумане".repeat(10);
        let doc = read_document(text.as_bytes(), Some("a.md"), None, 7).unwrap();
        assert_eq!(doc.text, "Ёжик🦔в ");
        assert!(doc.truncated);
        assert_eq!(doc.total_chars, text.chars().count());

        let exact = read_document("🦔🦔".as_bytes(), Some("a.md"), None, 2).unwrap();
        assert_eq!(exact.text, "🦔🦔");
        assert!(!exact.truncated);
        let none = read_document("🦔🦔".as_bytes(), Some("a.md"), None, 0).unwrap();
        assert_eq!(none.text, "");
        assert!(none.truncated);
    }

    #[test]
    fn binary_is_unsupported() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01";
        assert_eq!(
            read(png, Some("a.png"), Some("image/png")),
            Err(DocumentError::Unsupported)
        );
        // A NUL byte is binary even when the name says text.
        assert_eq!(
            read(b"abc\0def", Some("a.txt"), Some("text/plain")),
            Err(DocumentError::Unsupported)
        );
        // Mostly control bytes, no NUL.
        let noise: Vec<u8> = (0..200u8).map(|i| 1 + i % 8).collect();
        assert_eq!(
            read(&noise, Some("a.txt"), None),
            Err(DocumentError::Unsupported)
        );
        assert_eq!(
            read(b"PK\x03\x04\x14\x00\x06\x00", Some("a.docx"), None),
            Err(DocumentError::Unsupported)
        );
        assert_eq!(DocumentError::Unsupported.label(), "unsupported");
    }

    #[test]
    fn unknown_type_with_text_content_is_read() {
        let script = b"#!/bin/sh\necho hello\n";
        let doc = read(script, None, Some("application/octet-stream")).unwrap();
        assert_eq!(doc.text, "#!/bin/sh\necho hello\n");
        let doc = read(b"fn main() {}\n", Some("main.weird"), None).unwrap();
        assert_eq!(doc.kind, DocumentKind::Text);
    }

    #[test]
    fn declared_text_is_more_lenient() {
        // Latin-1 text: a quarter of its characters invalid UTF-8.
        let latin1 = b"caf\xE9 cr\xE8me br\xFBl\xE9e";
        assert!(read(latin1, Some("notes.txt"), None).unwrap().lossy);
        assert_eq!(read(latin1, None, None), Err(DocumentError::Unsupported));
        assert!(read(latin1, None, Some("Text/Plain; charset=latin1")).is_ok());
    }

    #[test]
    fn names_and_mimes() {
        assert_eq!(extension("dir/Notes.MD").as_deref(), Some("md"));
        assert_eq!(extension("Makefile").as_deref(), Some("makefile"));
        assert_eq!(extension(".bashrc").as_deref(), Some(".bashrc"));
        assert_eq!(
            base_mime("Application/JSON; charset=utf-8"),
            "application/json"
        );
        assert!(is_text_mime("application/vnd.api+json"));
        assert!(!is_text_mime("application/zip"));
    }

    #[test]
    fn blank_lines_are_collapsed() {
        assert_eq!(
            normalise_whitespace("\n\n  a  \n\n\n\nb\nc   \n\x0C\n\n"),
            "a\n\nb\nc"
        );
        assert_eq!(normalise_whitespace("  \n \n"), "");
    }

    /// A one-page PDF whose content stream is `content`, with a correct
    /// cross-reference table.
    fn pdf_with_content(content: &str) -> Vec<u8> {
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R /Resources << >> >>"
                .to_owned(),
            format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        ];
        let mut out = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
        }
        let xref = out.len();
        out.extend_from_slice(
            format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
        );
        for offset in offsets {
            out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            max_chars in 0usize..64,
        ) {
            if let Ok(doc) = read_document(&bytes, None, None, max_chars) {
                proptest::prop_assert!(doc.text.chars().count() <= max_chars);
            }
            let _ = read_document(&bytes, Some("a.txt"), Some("text/plain"), max_chars);
        }

        #[test]
        fn mangled_pdf_never_panics(
            cuts in proptest::collection::vec((0usize..2000, proptest::num::u8::ANY), 1..8),
        ) {
            let mut bytes = HELLO_PDF.to_vec();
            for (at, byte) in cuts {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            let _ = read_document(&bytes, None, None, 100);
        }

        #[test]
        fn truncation_is_exact(text in "\\PC{0,40}", max_chars in 0usize..50) {
            let doc = cut(text.clone(), DocumentKind::Text, false, max_chars);
            let n = text.chars().count();
            proptest::prop_assert_eq!(doc.total_chars, n);
            proptest::prop_assert_eq!(doc.truncated, n > max_chars);
            proptest::prop_assert_eq!(doc.text.chars().count(), n.min(max_chars));
            proptest::prop_assert!(text.starts_with(&doc.text));
        }
    }
}
